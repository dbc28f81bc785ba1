from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from litetask_async import LiteTask
from litetask_async.worker import Worker
from tests.pg_server import PostgresServer, create_database, get_postgres_url

BROKERS = ["memory", "sqlite", "postgres"]


@pytest.fixture(scope="session")
def _postgres() -> Iterator[tuple[str, PostgresServer | None]]:
    """A PostgreSQL server for the whole run: LITETASK_TEST_POSTGRES_URL, or an embedded one."""
    url, server = get_postgres_url()
    yield url, server
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_server_url(_postgres: tuple[str, PostgresServer | None]) -> str:
    return _postgres[0]


@pytest.fixture(scope="session")
def postgres_server(_postgres: tuple[str, PostgresServer | None]) -> PostgresServer | None:
    """The embedded server when we started it (for restart tests), None for an external URL."""
    return _postgres[1]


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty database on the test server."""
    return create_database(postgres_server_url, f"litetask_{uuid.uuid4().hex[:16]}")


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
    if kind == "postgres":
        return str(request.getfixturevalue("postgres_url"))
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
