from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from litetask_async import LiteTask
from litetask_async.worker import Worker

BROKERS = ["memory", "sqlite"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    raise AssertionError(kind)


@pytest.fixture
async def app(broker_url: str) -> AsyncIterator[LiteTask]:
    a = LiteTask(broker_url)
    yield a
    await a.aclose()
    a.close()


@asynccontextmanager
async def running_worker(app: LiteTask, **kw: Any) -> AsyncIterator[Worker]:
    """A worker on this loop, stopped (and awaited) on exit."""
    opts: dict[str, Any] = {"install_signal_handlers": False, "heartbeat_interval": 0.2,
                            "heartbeat_timeout": 2.0, "grace_period": 5.0, "processes": 2}
    opts.update(kw)
    w = Worker(app, **opts)
    t = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(t, 60)
