"""One in-process worker drains N no-op tasks from the in-memory broker; prints tasks/s.

    python benchmarks/notes/memory_drain.py 2000
    python benchmarks/notes/memory_drain.py 20000

Showed (2026-11-29, quiet 2-core machine) that the memory broker's claim scanned and sorted every
task ever stored: 18,900/s with 2,000 waiting, 2,700/s with 20,000 waiting. With its index of
pending tasks (heaps in claim order): 82,900/s and 80,700/s.
"""

from __future__ import annotations

import asyncio
import sys
import time

from litetask_async import LiteTask
from litetask_async.worker import Worker


async def main(n: int) -> None:
    app = LiteTask(f"memory://drain{n}")

    @app.task(name="noop")
    async def noop() -> None:
        return None

    await noop.adelay_many([((), {})] * n)
    worker = Worker(app, concurrency=10, install_signal_handlers=False)
    t0 = time.perf_counter()
    run = asyncio.ensure_future(worker.run())
    while worker.processed < n:
        await asyncio.sleep(0.01)
    dt = time.perf_counter() - t0
    worker.stop()
    await run
    print(f"memory broker, {n:,} waiting: {n / dt:,.0f} tasks/s")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
