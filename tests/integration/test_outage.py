"""Database outages: PostgreSQL stopped and started again; an SQLite file locked for long."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from litetask_async import BrokerUnavailable, LiteTask, TaskStatus
from tests import jobs
from tests.conftest import running_worker
from tests.pg_server import PostgresServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_postgres_restart_loses_no_result(postgres_url: str, postgres_server: PostgresServer | None) -> None:
    if postgres_server is None:
        pytest.skip("needs the embedded server to stop and start it (LITETASK_TEST_POSTGRES_URL is set)")
    app = LiteTask(postgres_url)
    t = jobs.register(app)
    async with running_worker(app, heartbeat_interval=0.5, heartbeat_timeout=60):
        before = await t["aadd"].adelay(1, 1)
        assert (await app.wait(before, 10)).status is TaskStatus.COMPLETED
        # tasks that are running while the database goes away, and finish during the outage
        during = [await t["sleep_async"].adelay(1.0) for _ in range(5)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(postgres_server.stop, "fast")
        with pytest.raises(BrokerUnavailable):
            await t["aadd"].adelay(2, 2)  # a clear error, not a hang
        await asyncio.sleep(3)  # the tasks finish while the database is down
        await asyncio.to_thread(postgres_server.start)
        recs = [await app.wait(i, 60) for i in during]
        after = await t["aadd"].adelay(3, 3)
        rec_after = await app.wait(after, 30)
    assert [r.status for r in recs] == [TaskStatus.COMPLETED] * 5
    assert all(r.attempts == 1 for r in recs)  # results kept and written, not re-run
    assert rec_after.status is TaskStatus.COMPLETED and rec_after.result == 6
    await app.aclose()


async def test_first_enqueue_after_a_postgres_restart_succeeds(postgres_url: str,
                                                              postgres_server: PostgresServer | None) -> None:
    """The pool's idle connections were closed by the restart: they are thrown away, not handed
    out (the first call after the restart used to fail with 'connection is closed')."""
    if postgres_server is None:
        pytest.skip("needs the embedded server to stop and start it (LITETASK_TEST_POSTGRES_URL is set)")
    app = LiteTask(postgres_url)
    t = jobs.register(app)
    try:
        await asyncio.gather(*(t["aadd"].adelay(i, i) for i in range(5)))  # several idle connections
        await asyncio.to_thread(postgres_server.restart)
        await asyncio.sleep(0.5)  # asyncpg has seen the connections close
        tid = await t["aadd"].adelay(1, 2)
        rec = await app.get_task(tid)
        assert rec is not None and rec.status is TaskStatus.PENDING
    finally:
        await app.aclose()


async def test_sqlite_locked_for_long(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    app = LiteTask(f"sqlite:///{db}?busy_timeout=1")
    t = jobs.register(app)
    async with running_worker(app, heartbeat_timeout=60):  # the outage is shorter than this
        running = [await t["sleep_async"].adelay(0.5) for _ in range(3)]
        await asyncio.sleep(0.2)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            t0 = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="locked"):
                await t["aadd"].adelay(1, 2)
            assert time.monotonic() - t0 < 30
            await asyncio.sleep(1.5)  # the running tasks finish while the file is locked
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        recs = [await app.wait(i, 30) for i in running]
        rec = await app.wait(await t["aadd"].adelay(2, 3), 30)
    assert all(r.status is TaskStatus.COMPLETED and r.attempts == 1 for r in recs)
    assert rec.result == 5
    await app.aclose()
