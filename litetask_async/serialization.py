"""JSON payloads, and input/output models (dataclasses, pydantic models, objects with ``as_dict()``).

Nothing here unpickles: the database only ever holds JSON text.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import threading
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
# The escape of a UTF-16 surrogate (U+D800..U+DFFF). The ASCII encoder writes a character beyond
# the BMP (an emoji) as a pair of these too, so a match only means "look closer".
_SURROGATE = re.compile(r"\\ud[89a-f]")
# Either escape, parity aside: one scan that rules both out for nearly every payload.
_SUSPECT = re.compile(r"\\u(?:0000|d[89a-f])")

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_default)
# Writes non-ASCII text as it is, so that a lone surrogate reaches the UTF-8 codec and fails there.
_unicode_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_default,
                                    ensure_ascii=False)


# json's C encoder, made once per thread: JSONEncoder.encode() builds a new one on every call
# (about 0.55 of the 0.8 us that encoding a one-argument call takes). Per thread because its
# circular-reference markers are per call in JSONEncoder; after any error it is replaced, as an
# encode that fails leaves its markers behind (a later object at the same address would pass
# for a cycle).
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_local = threading.local()


def _encode(value: Any) -> str:
    if _c_make_encoder is None:  # no C accelerator (another Python implementation)
        return _encoder.encode(value)
    enc = getattr(_local, "encoder", None)
    if enc is None:
        enc = _local.encoder = _c_make_encoder(
            {}, _default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    try:
        return "".join(enc(value, 0))
    except BaseException:
        _local.encoder = None
        raise


def dumps(value: Any, what: str) -> str:
    """Serialise ``value`` to JSON text, or raise :class:`SerializationError` naming ``what``.

    One shared encoder; models (dataclasses, pydantic, ``as_dict()``) are turned into dicts by
    its ``default`` hook, at any depth. Refused alike on every broker: what is not JSON, NaN and
    infinities, text with NUL or with a lone surrogate (not Unicode text, such as an
    ``os.listdir()`` name that is not UTF-8), and values nested too deeply.
    """
    if not value and isinstance(value, (list, tuple)):
        return "[]"
    if not value and isinstance(value, dict):
        return "{}"
    try:
        text = _encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} cannot be stored as JSON: {exc}. Pass JSON types (str, int, float, bool, None, "
            "list, dict), a dataclass, a pydantic model or an object with as_dict()."
        ) from exc
    except RecursionError:
        raise _too_deep(what) from None
    # A one-character search runs at memchr speed: payloads without any escape pay next to nothing.
    if "\\" in text and _SUSPECT.search(text):
        _refuse_escapes(value, text, what)
    return text


def _refuse_escapes(value: Any, text: str, what: str) -> None:
    """The slow path of :func:`dumps`, for text that may hold an escaped NUL or lone surrogate:
    PostgreSQL's jsonb refuses both, and a lone surrogate fails whoever reads it back as UTF-8."""
    if _NUL.search(text):
        raise SerializationError(f"{what} cannot be stored: it contains a NUL character (\\x00)")
    if not _SURROGATE.search(text):
        return
    try:
        _unicode_encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SerializationError(
            f"{what} cannot be stored: it contains text that is not valid Unicode (the lone "
            f"surrogate {ascii(exc.object[exc.start:exc.end])[1:-1]}, as os.listdir() gives for a "
            "file name that is not UTF-8; decode such bytes with errors='replace', or pass them "
            "as a list of ints)") from None
    except RecursionError:
        raise _too_deep(what) from None


def _too_deep(what: str) -> SerializationError:
    return SerializationError(
        f"{what} cannot be stored as JSON: it is nested too deeply (lists and dicts inside each "
        f"other, more than about {sys.getrecursionlimit()} levels)")


def loads(text: str | bytes) -> Any:
    """``json.loads``, also for a document nested deeper than this thread's stack allows.

    ``json`` decodes by recursion: a document :func:`dumps` accepted in a shallow stack can be
    too deep for a reader deeper in its own. Such a document is decoded again on a fresh thread
    (an empty stack), so whatever ``dumps`` accepted is read back; deeper ones raise RecursionError.
    """
    try:
        return json.loads(text)
    except RecursionError:
        pass
    outcome: list[tuple[bool, Any]] = []

    def decode() -> None:
        try:
            outcome.append((True, json.loads(text)))
        except BaseException as exc:  # raised in the caller below
            outcome.append((False, exc))

    thread = threading.Thread(target=decode, name="litetask-json-decode")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


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
