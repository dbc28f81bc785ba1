"""The app served by worker subprocesses in the acceptance tests (URL from LITETASK_URL)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from litetask_async import LiteTask

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


if os.environ.get("LITETASK_TEST_PERIODIC"):
    @app.periodic(every=1, name="xproc.every_second")
    async def every_second() -> None:
        _effect(os.environ["LITETASK_TEST_PERIODIC"], int(time.time()))
