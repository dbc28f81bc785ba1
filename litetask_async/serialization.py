"""JSON payloads, and input/output models (dataclasses, pydantic models, objects with ``as_dict()``).

Nothing here unpickles: the database only ever holds JSON text.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
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


def _default(value: Any) -> Any:
    """json's hook for what it cannot encode itself: models become their dicts."""
    if isinstance(value, type):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        return as_dict()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# An escaped NUL: \u0000 preceded by an even number of backslashes (an odd run would be an
# escaped backslash followed by the text "u0000").
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_default)


def dumps(value: Any, what: str) -> str:
    """Serialise ``value`` to JSON text, or raise :class:`SerializationError` naming ``what``.

    One shared encoder; models (dataclasses, pydantic, ``as_dict()``) are turned into dicts by
    its ``default`` hook, at any depth.
    """
    if not value and isinstance(value, (list, tuple)):
        return "[]"
    if not value and isinstance(value, dict):
        return "{}"
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} cannot be stored as JSON: {exc}. Pass JSON types (str, int, float, bool, None, "
            "list, dict), a dataclass, a pydantic model or an object with as_dict()."
        ) from exc
    if "\\u0000" in text and _NUL.search(text):
        # PostgreSQL's jsonb refuses it; refuse it on every broker alike.
        raise SerializationError(f"{what} cannot be stored: it contains a NUL character (\\x00)")
    return text


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
