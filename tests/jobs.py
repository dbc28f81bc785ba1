"""Task functions shared by the tests. Plain functions: each test registers them on its own app
with ``register(app)``; pool processes import them from here by name."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from litetask_async import LiteTask, TaskProgress


@dataclass
class AddInput:
    a: int
    b: int


@dataclass
class AddOutput:
    sum: int


class PAddInput(BaseModel):
    a: int
    b: int


class PAddOutput(BaseModel):
    sum: int


class AsDictPoint:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y}


def add(a: int, b: int) -> int:
    return a + b


async def aadd(a: int, b: int) -> int:
    return a + b


def add_models(data: AddInput) -> AddOutput:
    assert isinstance(data, AddInput)
    return AddOutput(sum=data.a + data.b)


async def aadd_pydantic(data: PAddInput) -> PAddOutput:
    assert isinstance(data, PAddInput)
    return PAddOutput(sum=data.a + data.b)


def norm(p: AsDictPoint) -> dict[str, Any]:
    assert isinstance(p, AsDictPoint)
    return {"norm2": p.x * p.x + p.y * p.y, "point": p}


def getpid() -> int:
    return os.getpid()


async def agetpid() -> int:
    return os.getpid()


def sleep_pool(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


async def sleep_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def progress_pool(steps: int, pause: float, progress: TaskProgress) -> int:
    for i in range(1, steps + 1):
        time.sleep(pause)
        progress.set(100 * i / steps)
    return steps


async def progress_async(progress: TaskProgress, steps: int, pause: float) -> int:
    for i in range(1, steps + 1):
        await asyncio.sleep(pause)
        progress.set(100 * i / steps)
    return steps


def fail_pool(message: str) -> None:
    raise ValueError(message)


async def fail_async(message: str) -> None:
    raise ValueError(message)


async def fail_nul() -> None:
    raise ValueError("bad byte \x00 here")


def unserialisable_result() -> object:
    return object()


async def aunserialisable_result() -> object:
    return {1, 2}


def crash_pool(code: int) -> None:
    os._exit(code)


_flaky_calls: dict[str, int] = {}


async def flaky_async(key: str, failures: int) -> int:
    n = _flaky_calls[key] = _flaky_calls.get(key, 0) + 1
    if n <= failures:
        raise ConnectionError(f"flaky failure {n}")
    return n


def retry_me_pool(key_file: str, times: int) -> int:
    """Asks for a retry (with its own short delay) ``times`` times, counting runs in a file."""
    from litetask_async import Retry

    with open(key_file, "a+") as f:
        f.seek(0)
        n = len(f.read()) + 1
        f.write("x")
    if n <= times:
        raise Retry(f"not yet ({n})", delay=0.05)
    return n


async def retry_me_async(key: str, times: int) -> int:
    from litetask_async import Retry

    n = _flaky_calls[key] = _flaky_calls.get(key, 0) + 1
    if n <= times:
        raise Retry(f"not yet ({n})", delay=0.05)
    return n


def record_effect(path: str, n: int) -> int:
    """Side effect for exactly-once checks: append one line per execution."""
    with open(path, "a") as f:
        f.write(f"{n}\n")
    return n


async def arecord_effect(path: str, n: int) -> int:
    with open(path, "a") as f:
        f.write(f"{n}\n")
    return n


def effect_then_exit(path: str, n: int, code: int) -> None:
    """Records that it ran, then ends its own process."""
    record_effect(path, n)
    os._exit(code)


def effect_then_sleep(path: str, n: int, seconds: float) -> int:
    record_effect(path, n)
    time.sleep(seconds)
    return n


async def exit_async(code: int) -> None:
    import sys

    sys.exit(code)


async def raise_base_async(kind: str) -> None:
    raise {"KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit}[kind]()


class BadStrError(Exception):
    """An exception whose ``__str__`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def bad_str_pool() -> None:
    raise BadStrError("hidden")


async def bad_str_async() -> None:
    raise BadStrError("hidden")


def register(app: LiteTask) -> dict[str, Any]:
    """Register every function above on ``app``; returns the tasks by function name."""
    fns = [add, aadd, add_models, aadd_pydantic, norm, getpid, agetpid, sleep_pool, sleep_async,
           progress_pool, progress_async, fail_pool, fail_async, unserialisable_result,
           aunserialisable_result, crash_pool, record_effect, arecord_effect, exit_async,
           raise_base_async, bad_str_pool, bad_str_async]
    tasks = {fn.__name__: app.task(fn) for fn in fns}
    tasks["flaky_async"] = app.task(flaky_async, retries=3, retry_backoff=0.01)
    tasks["retry_me_pool"] = app.task(retry_me_pool, retries=2, retry_backoff=30)
    tasks["retry_me_async"] = app.task(retry_me_async, retries=2, retry_backoff=30)
    tasks["only_conn_errors"] = app.task(fail_async, name="only_conn_errors", retries=3,
                                         retry_backoff=0.01, retry_on=(ConnectionError,))
    tasks["limited"] = app.task(interval, name="limited", max_concurrency=2)
    tasks["tick"] = app.task(tick)
    tasks["fail_nul"] = app.task(fail_nul)
    tasks["logs_pool"] = app.task(logs_pool)
    tasks["logs_async"] = app.task(logs_async)
    tasks["chain_async"] = app.task(chain_async)
    tasks["chain_pool"] = app.task(chain_pool)
    tasks["timeout_pool"] = app.task(sleep_pool, name="timeout_pool", timeout=0.5)
    tasks["timeout_async"] = app.task(sleep_async, name="timeout_async", timeout=0.2)
    tasks["exit_async_timeout"] = app.task(exit_async, name="exit_async_timeout", timeout=5)
    tasks["effect_then_exit"] = app.task(effect_then_exit)
    tasks["effect_timeout_pool"] = app.task(effect_then_sleep, name="effect_timeout_pool", timeout=0.5)
    tasks["progress_steps"] = app.task(progress_steps)
    tasks["fail_once"] = app.task(fail_once)
    return tasks


async def interval(seconds: float) -> list[float]:
    """Sleeps; returns its own start and end time (for overlap checks)."""
    import time as _time

    start = _time.time()
    await asyncio.sleep(seconds)
    return [start, _time.time()]


async def tick() -> float:
    import time as _time

    return _time.time()


async def chain_async(n: int) -> str:
    """Enqueues a follow-up task from async code."""
    from tests import jobs_chain

    return await jobs_chain.app_task().adelay(n, 1)


def chain_pool(n: int) -> str:
    """Enqueues a follow-up task from a process-pool process."""
    from tests import jobs_chain

    return jobs_chain.app_task().delay(n, 2)


def logs_pool(n: int, progress: TaskProgress) -> int:
    import logging

    log = logging.getLogger("tests.jobs.pool")
    for i in range(n):
        log.info("pool step %d", i)
    log.warning("pool done")
    progress.set(50, "half way in the pool")
    return n


async def logs_async(n: int, progress: TaskProgress) -> int:
    import logging

    log = logging.getLogger("tests.jobs.async")
    for i in range(n):
        log.info("async step %d", i)
    progress.set(50, "half way")
    await asyncio.sleep(0.5)
    return n


async def progress_steps(steps: int, pause: float, progress: TaskProgress) -> int:
    """Moves its progress in ``steps`` equal steps with a status line each (the dashboard's live bar)."""
    for i in range(1, steps + 1):
        await asyncio.sleep(pause)
        progress.set(100 * i / steps, f"step {i} of {steps}")
    return steps


async def fail_once(marker: str) -> str:
    """Fails while the file ``marker`` does not exist (and creates it): a retry then completes."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError(f"first run: created {marker}")
    return "second time lucky"
