"""Task definitions for ``bench_embedded.py``; also the entry point of its worker subprocess.

Why a separate module: plain ``def`` tasks run in the worker's *spawn* process pool, and a pool
process finds a task by importing ``fn.__module__`` and reading ``fn.__qualname__`` from it. So
the tasks must live at module level in an importable module whose attribute is the ``Task``
object (``@app.task`` rebinds the name).

* ``app`` is built from ``$LITETASK_BENCH_URL`` (default ``memory://bench-import``; creating a
  ``LiteTask`` opens nothing, so importing this module in a pool process has no side effect).
* Every task has an explicit ``name=`` so that the producer (which may import this module as
  ``_bench_tasks`` or ``benchmarks._bench_tasks``) and the worker agree on task names.
* :func:`make_app` registers the same functions on a fresh ``LiteTask(url)``: the benchmark
  uses one app per phase (each phase has its own SQLite file or memory store).

Worker subprocess protocol (used for the SQLite phases, see ``bench_embedded.py``)::

    LITETASK_BENCH_URL=sqlite:////tmp/x.db python -c "import _bench_tasks as t; t.worker_main()" CONCURRENCY [POLL]

prints ``ready`` once imports are done, waits for a line ``go`` on stdin, prints ``started``
and runs ``app.run_worker(concurrency=CONCURRENCY)`` until SIGTERM. ``POLL``, if given,
overrides ``SQLiteBroker.poll_interval`` (the idle ``PRAGMA data_version`` poll, 20 ms by
default) for the low-latency variant of the latency benchmark.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from litetask_async import LiteTask

URL = os.environ.get("LITETASK_BENCH_URL", "memory://bench-import")

app = LiteTask(URL)

NOOP_ASYNC = "bench.noop_async"
NOOP_SYNC = "bench.noop_sync"
RECORD_START = "bench.record_start"
RECORD_START_SYNC = "bench.record_start_sync"


@app.task(name=NOOP_ASYNC)
async def noop_async() -> None:
    """No-op coroutine task: runs on the worker's event loop."""
    return None


@app.task(name=NOOP_SYNC)
def noop_sync() -> None:
    """No-op plain function task: runs in the worker's process pool."""
    return None


@app.task(name=RECORD_START)
async def record_start() -> float:
    """Latency probe: returns the wall-clock time at which the task body started."""
    return time.time()


@app.task(name=RECORD_START_SYNC)
def record_start_sync() -> float:
    """Latency probe for the process-pool path: wall-clock start time, in a pool process."""
    return time.time()


def plain_noop() -> None:
    """The same no-op as a bare function, for the plain ProcessPoolExecutor yardstick."""
    return None


def make_app(url: str) -> tuple[LiteTask, dict[str, Any]]:
    """A fresh app on ``url`` with the benchmark tasks registered under the same names.

    The ``Task`` objects are bound to the new app (enqueueing goes to ``url``); the wrapped
    functions are the module-level ones, so a pool process still resolves them here.
    """
    a = LiteTask(url)
    tasks = {
        "noop_async": a.task(name=NOOP_ASYNC)(noop_async.fn),
        "noop_sync": a.task(name=NOOP_SYNC)(noop_sync.fn),
        "record_start": a.task(name=RECORD_START)(record_start.fn),
        "record_start_sync": a.task(name=RECORD_START_SYNC)(record_start_sync.fn),
    }
    return a, tasks


def worker_main() -> None:
    """Entry point of the worker subprocess (see the module docstring)."""
    concurrency = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    if len(sys.argv) > 2:
        from litetask_async.brokers.sqlite import SQLiteBroker

        SQLiteBroker.poll_interval = SQLiteBroker.slow_poll_interval = float(sys.argv[2])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    print("started", flush=True)
    # Signal handlers installed (main thread): SIGTERM from the benchmark stops the worker.
    asyncio.run(app.run_worker(concurrency=concurrency))
