"""Task definitions for the huey peer benchmark (see ``peer_huey.py``).

The task bodies live at module level so that they are importable by name
(``<module>.noop`` / ``<module>.record_start``), which is how huey's registry
identifies tasks in a serialized message.  They are registered on a *fresh*
``SqliteHuey`` per benchmark phase through :func:`make_huey`, because every
phase uses its own, freshly created SQLite file.

For a manual cross-check with huey's own CLI consumer you can also do::

    HUEY_BENCH_DB=/tmp/h.db huey_consumer benchmarks._huey_tasks.huey -w 1

(``huey`` is created lazily from ``$HUEY_BENCH_DB`` on first attribute access,
so importing this module never creates a database file as a side effect.)
"""
from __future__ import annotations

import os
import time

from huey import SqliteHuey

QUEUE_NAME = "litetask_bench"


def noop():
    """The no-op task. Returns None, so (huey default store_none=False)
    nothing is written to the result store."""
    return None


def record_start():
    """Latency probe: returns the wall-clock time at which the task body
    started running; huey stores it in its result store (kv table)."""
    return time.time()


def make_huey(filename: str, **kwargs) -> tuple[SqliteHuey, dict]:
    """Create a SqliteHuey on ``filename`` (huey defaults otherwise: WAL
    journal, results=True, store_none=False, pickle serializer) and register
    the benchmark tasks on it.  Returns ``(huey, {"noop": ..., "record_start": ...})``
    where the values are huey ``TaskWrapper`` objects (calling one enqueues)."""
    h = SqliteHuey(QUEUE_NAME, filename=filename, **kwargs)
    tasks = {
        "noop": h.task()(noop),
        "record_start": h.task()(record_start),
    }
    return h, tasks


def __getattr__(name):  # PEP 562: lazy module-level ``huey`` for the CLI.
    if name == "huey":
        path = os.environ.get("HUEY_BENCH_DB", "huey_bench.db")
        h, _ = make_huey(path)
        globals()["huey"] = h
        return h
    raise AttributeError(name)
