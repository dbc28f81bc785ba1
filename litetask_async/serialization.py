"""JSON payloads, and input/output models (dataclasses, pydantic models, objects with ``as_dict()``).

Nothing here unpickles: the database only ever holds JSON text.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from .exceptions import SerializationError


def is_model_class(tp: Any) -> bool:
    """True for a dataclass, a pydantic model or a class that defines ``as_dict()``."""
    if not isinstance(tp, type):
        return False
    return (
        dataclasses.is_dataclass(tp)
        or hasattr(tp, "model_validate")
        or callable(getattr(tp, "as_dict", None))
    )


def to_jsonable(value: Any) -> Any:
    """Turn models into plain dicts, recursively through lists, tuples and dicts."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "model_dump") and not isinstance(value, type):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict) and not isinstance(value, type):
        return to_jsonable(as_dict())
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def dumps(value: Any, what: str) -> str:
    """Serialise ``value`` to JSON text, or raise :class:`SerializationError` naming ``what``."""
    try:
        return json.dumps(to_jsonable(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} cannot be stored as JSON: {exc}. Pass JSON types (str, int, float, bool, None, "
            "list, dict), a dataclass, a pydantic model or an object with as_dict()."
        ) from exc


def rebuild(tp: Any, value: Any) -> Any:
    """Rebuild a model of type ``tp`` from its stored dict; other values are returned as they are."""
    if value is None or not is_model_class(tp) or not isinstance(value, dict):
        return value
    if hasattr(tp, "model_validate"):
        return tp.model_validate(value)
    return tp(**value)


def resolved_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """Type hints of ``fn`` with string annotations resolved where possible."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {
            name: p.annotation
            for name, p in inspect.signature(fn).parameters.items()
            if p.annotation is not inspect.Parameter.empty
        }
