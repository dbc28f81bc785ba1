"""Port of lilota's "5-setting-task-progress-manually" example.

A parameter annotated ``TaskProgress`` is injected by the worker (it is not passed to
``.delay``/``.adelay``). ``progress.set(pct)`` works the same in pool processes and in async tasks;
the worker writes the value to the task's record (coalesced, a few times a second), where any
process can read it with ``get_task``. Here the caller polls and prints the progress as it moves.

    python examples/seed_5_manual_progress.py     (stores its tasks in ./seed_5.db)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from litetask_async import LiteTask, TaskProgress, TaskStatus
from litetask_async.worker import Worker

DB_FILE = "seed_5.db"
app = LiteTask(f"sqlite:///{DB_FILE}")


@app.task(name="do_something")
def do_something(task_progress: TaskProgress) -> None:
    for i in range(1, 101):  # start at 1 and end with 100
        time.sleep(0.02)  # some work
        task_progress.set(i)


async def main() -> None:
    worker = Worker(app, install_signal_handlers=False)
    running = asyncio.create_task(worker.run())
    try:
        task_id = await do_something.adelay()
        seen = -1
        while True:
            record = await app.get_task(task_id)
            assert record is not None
            if record.progress != seen:
                seen = record.progress
                print(f"progress: {record.progress:3d}% ({record.status})", flush=True)
            if record.is_final:
                break
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running
        await app.aclose()
    if record.status is not TaskStatus.COMPLETED:
        raise SystemExit(f"task ended {record.status}: {record.error}")
    print(f"final progress: {record.progress}")  # should be 100


if __name__ == "__main__":
    for suffix in ("", "-wal", "-shm"):  # start from an empty database
        Path(DB_FILE + suffix).unlink(missing_ok=True)
    asyncio.run(main())
