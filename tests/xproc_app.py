"""The app served by worker subprocesses in the acceptance tests (URL from LITETASK_URL)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from litetask_async import LiteTask, TaskProgress

app = LiteTask(os.environ.get("LITETASK_URL", "sqlite:///xproc.db"))

log = logging.getLogger(__name__)


def _effect(path: str, n: int) -> None:
    # One short O_APPEND write per execution: lines from many processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@app.task
async def effect_async(path: str, n: int) -> int:
    _effect(path, n)
    return n


@app.task
def effect_pool(path: str, n: int) -> int:
    _effect(path, n)
    return n


@app.task
async def slow_effect_async(path: str, n: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    _effect(path, n)
    return n


@app.task
def slow_effect_pool(path: str, n: int, seconds: float) -> int:
    time.sleep(seconds)
    _effect(path, n)
    return n


@app.task(retries=2, retry_backoff=0.05)
async def chaos_async(path: str, n: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    _effect(path, n)
    return n


@app.task(retries=2, retry_backoff=0.05)
def chaos_pool(path: str, n: int, seconds: float) -> int:
    time.sleep(seconds)
    _effect(path, n)
    return n


@app.task(max_concurrency=2)
async def limited_interval(path: str, n: int, seconds: float) -> list[float]:
    start = time.time()
    await asyncio.sleep(seconds)
    end = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n} {start} {end}\n".encode())
    finally:
        os.close(fd)
    return [start, end]


@app.task
async def record_order(path: str, label: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{label}\n".encode())
    finally:
        os.close(fd)


@app.task
def log_pool(n: int) -> int:
    """Logs from a pool process (``litetask logs ID`` shows these)."""
    log.info("pool task says %d", n)
    log.warning("pool task warns %d", n)
    return n


@app.task
async def log_async(n: int) -> int:
    """Logs from the worker's event loop."""
    log.info("async task says %d", n)
    return n


@app.task
async def fail_once(marker: str) -> str:
    """Fails while ``marker`` does not exist (and creates it): a retry then completes."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError(f"first run: created {marker}")
    return "second time lucky"


@app.task
async def stepper(steps: int, pause: float, progress: TaskProgress) -> int:
    """Moves its progress in steps, with a status line each (``litetask wait`` shows them)."""
    for i in range(1, steps + 1):
        await asyncio.sleep(pause)
        progress.set(100 * i / steps, f"step {i} of {steps}")
    return steps


@app.task
def crash_after_effect(path: str, n: int, how: str) -> None:
    """Records that it ran, then dies: ``exit`` (os._exit(3)) or ``segfault``."""
    time.sleep(0.3)  # let the big progress messages flow meanwhile
    _effect(path, n)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    os._exit(3)


@app.task
def big_progress(path: str, n: int, seconds: float, progress: TaskProgress) -> int:
    """Reports progress with a large status line as fast as it can for ``seconds``."""
    _effect(path, n)
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        k += 1
        progress.set(k % 100, "m" * 200_000)
    return n


@app.task(timeout=1.0)
def big_progress_timeout(path: str, n: int, progress: TaskProgress) -> int:
    """Sends large progress messages until its timeout kills its process."""
    _effect(path, n)
    k = 0
    while True:
        k += 1
        progress.set(k % 100, "m" * 200_000)


if os.environ.get("LITETASK_TEST_PERIODIC"):
    @app.periodic(every=1, name="xproc.every_second")
    async def every_second() -> None:
        _effect(os.environ["LITETASK_TEST_PERIODIC"], int(time.time()))
