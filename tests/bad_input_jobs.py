"""Task functions of the bad-input tests (tests/conformance/test_bad_input.py). Module-level, so
that pool processes import them by name."""

from __future__ import annotations

import os
from typing import Any

from litetask_async import Retry


def _nested(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep, built without recursion."""
    outer: list[Any] = []
    inner = outer
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


def deep_result_pool(depth: int) -> list[Any]:
    return _nested(depth)


async def deep_result_async(depth: int) -> list[Any]:
    return _nested(depth)


def non_utf8_name_pool() -> str:
    # what os.listdir() gives for a file name that is not UTF-8: a lone surrogate
    return os.fsdecode(b"report-\xe9.txt")


async def non_utf8_name_async() -> str:
    return os.fsdecode(b"report-\xe9.txt")


async def retry_after(delay: float) -> None:
    raise Retry("try again much later", delay=delay)
