"""Port of lilota's "1-hello-world" example.

lilota::

    @lilota.register("hello-world")
    def hello_world() -> None:
        print("Hello World")

    lilota.start(); task_id = lilota.schedule("hello-world"); lilota.stop()
    print(lilota.get_task_by_id(task_id))

litetask_async: register with ``@app.task``, enqueue with ``.adelay()``, and run a worker in this
script (``Worker.run()`` as an asyncio task stands for ``lilota.start()``; ``Worker.stop()``, which
lets running tasks finish, for ``lilota.stop()``).

    python examples/seed_1_hello_world.py     (stores its tasks in ./seed_1.db)

The plain ``def`` runs in a pool process (started with spawn, which imports this file again: keep
side effects under ``if __name__ == "__main__"``). That process shares this script's stdout, so its
"Hello World" appears here too.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from litetask_async import LiteTask
from litetask_async.worker import Worker

DB_FILE = "seed_1.db"  # in the current directory
app = LiteTask(f"sqlite:///{DB_FILE}")


@app.task(name="hello-world")
def hello_world() -> None:
    print(f"Hello World (from pool process {os.getpid()})", flush=True)


async def main() -> None:
    worker = Worker(app, install_signal_handlers=False)
    running = asyncio.create_task(worker.run())  # lilota.start()
    try:
        task_id = await hello_world.adelay()  # lilota.schedule("hello-world")
        record = await app.wait(task_id, timeout=30)
    finally:
        worker.stop()  # lilota.stop(): stop claiming, let running tasks finish
        await running
        await app.aclose()
    print(f"task {record.name} {record.id}: {record.status}, result={record.result!r} "
          f"(this script is process {os.getpid()})")
    print(record)


if __name__ == "__main__":
    for suffix in ("", "-wal", "-shm"):  # start from an empty database
        Path(DB_FILE + suffix).unlink(missing_ok=True)
    asyncio.run(main())
