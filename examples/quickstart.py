"""litetask_async quick start: one script, no server.

Run it from anywhere (it needs no database server):

    python examples/quickstart.py

It stores its tasks in ``./litetask.db``, the default SQLite file of ``LiteTask()`` in the
current directory, enqueues three tasks, runs a worker inside the same script, waits for the
results and prints them.

- ``add`` is a plain ``def``: the worker runs it in its process pool, so it may burn CPU without
  blocking anything. Pool processes are started with *spawn* and import this file again, which is
  why everything with side effects sits under ``if __name__ == "__main__"``.
- ``greet`` is an ``async def``: the worker runs it on its own event loop.
- ``crunch`` asks for a :class:`TaskProgress` and reports how far it got; the caller draws a
  progress bar from the stored value.

In a real deployment the worker is its own process, started with
``asyncio.run(app.run_worker())`` and stopped with Ctrl-C or SIGTERM; producers (web handlers,
scripts, cron jobs) only call ``.delay()`` / ``await .adelay()`` and read results back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from litetask_async import LiteTask, TaskProgress, TaskStatus

app = LiteTask()  # the default: the SQLite file ./litetask.db, no server needed


@app.task
def add(a: int, b: int) -> int:
    """A plain function: runs in a pool process."""
    return a + b


@app.task
async def greet(name: str) -> str:
    """A coroutine: runs on the worker's event loop."""
    await asyncio.sleep(0.1)  # stands for real I/O: an HTTP call, a database query...
    return f"Hello, {name}!"


@app.task
def crunch(steps: int, progress: TaskProgress) -> int:
    """Slow work that reports its progress (the ``progress`` argument is injected by the worker)."""
    total = 0
    for i in range(steps):
        time.sleep(0.03)
        total += i * i
        progress.set(100 * (i + 1) / steps)
    return total


def bar(pct: int, width: int = 30) -> str:
    done = width * pct // 100
    return f"[{'#' * done}{'.' * (width - done)}] {pct:3d}%"


async def run(add_id: str) -> None:
    # Enqueue from async code.
    greet_id = await greet.adelay("litetask")
    crunch_id = await crunch.adelay(60)
    print(f"enqueued greet -> {greet_id}")
    print(f"enqueued crunch -> {crunch_id}")

    # Start a worker on this event loop. (install_signal_handlers=False: this script, not the
    # worker, owns Ctrl-C here.)
    worker = asyncio.create_task(app.run_worker(concurrency=4, install_signal_handlers=False))
    try:
        # Draw a progress bar while crunch runs: poll its record and print each new value (a new
        # status counts too: 100 % may be stored while it still runs, then it completes).
        shown: tuple[int, TaskStatus] | None = None
        while True:
            rec = await app.get_task(crunch_id)
            assert rec is not None
            if (rec.progress, rec.status) != shown:
                shown = (rec.progress, rec.status)
                print(f"crunch {bar(rec.progress)} ({rec.status})")
            if rec.is_final:
                break
            await asyncio.sleep(0.05)

        for name, task_id in (("add(2, 3)", add_id), ("greet('litetask')", greet_id),
                              ("crunch(60)", crunch_id)):
            rec = await app.wait(task_id, timeout=30)
            if rec.status is not TaskStatus.COMPLETED:
                raise SystemExit(f"{name} ended {rec.status}: {rec.error}")
            print(f"{name} = {rec.result!r}")
    finally:
        # Every task is done, so the worker is idle: cancelling it stops it at once.
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await app.aclose()


def main() -> None:
    started = time.monotonic()

    # Enqueue from sync code: returns the id as soon as the task is stored.
    add_id = add.delay(2, 3)
    print(f"enqueued add -> {add_id}")

    asyncio.run(run(add_id))
    app.close()  # stops the background thread that served .delay()
    print(f"done in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
