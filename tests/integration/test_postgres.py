"""PostgreSQL-specific behaviour: migrations, the claim's query plan, LISTEN/NOTIFY recovery."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from litetask_async import ConfigurationError, LiteTask, TaskStatus
from litetask_async.brokers import postgres_sql as sql
from litetask_async.brokers.postgres import PostgresBroker, asyncpg_dsn
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_concurrent_first_use_creates_schema_once(postgres_url: str) -> None:
    apps = [LiteTask(postgres_url) for _ in range(8)]
    brokers = await asyncio.gather(*(a.broker() for a in apps))
    assert len(brokers) == 8
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        assert await conn.fetchval(sql.GET_VERSION) == str(sql.LATEST_VERSION)
    finally:
        await conn.close()
    assert await apps[0].migrate() == sql.LATEST_VERSION  # idempotent
    for a in apps:
        await a.aclose()


async def test_auto_migrate_off_refuses_missing_schema(postgres_url: str) -> None:
    app = LiteTask(postgres_url, auto_migrate=False)
    with pytest.raises(ConfigurationError, match="litetask migrate"):
        await app.broker()
    assert await app.migrate() == sql.LATEST_VERSION
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 2)
    assert (await app.get_task(tid)) is not None
    await app.aclose()


async def test_claim_uses_partial_index_with_many_finished_rows(postgres_url: str) -> None:
    app = LiteTask(postgres_url)
    await app.broker()
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        await conn.execute("""
            INSERT INTO litetask_tasks (id, name, status, args, kwargs, finished_at)
            SELECT 'done-' || g, 'x', 'completed', '[]', '{}', now() FROM generate_series(1, 50000) g
        """)
        await conn.execute("""
            INSERT INTO litetask_tasks (id, name, args, kwargs)
            SELECT 'todo-' || g, 'x', '[]', '{}' FROM generate_series(1, 20) g
        """)
        await conn.execute("ANALYZE litetask_tasks")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) " + sql.CLAIM.replace("$1", "'w'").replace("$2", "1").replace("$3", "10").replace("$4", "NULL")))
    finally:
        await conn.close()
    # one of the partial indexes over pending rows, never the 50,000 finished ones
    assert "litetask_tasks_pending" in plan or "litetask_tasks_due" in plan, plan
    assert "Seq Scan" not in plan, plan
    await app.aclose()


async def test_listener_reconnects_and_still_wakes_workers(postgres_url: str) -> None:
    app = LiteTask(postgres_url)
    t = jobs.register(app)
    broker = await app.broker()
    assert isinstance(broker, PostgresBroker)
    async with running_worker(app, poll_interval=30.0):
        for _ in range(50):
            if broker._listening:
                break
            await asyncio.sleep(0.1)
        rec = await app.wait(await t["aadd"].adelay(1, 1), 10)
        assert rec.status is TaskStatus.COMPLETED
        # kill the listener's backend from outside
        conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()")
        finally:
            await conn.close()
        assert killed >= 1
        for _ in range(100):
            await asyncio.sleep(0.1)
            if broker._listening:
                break
        assert broker._listening, "the listener came back"
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rec = await app.wait(await t["aadd"].adelay(2, 2), 10)
        # woken by NOTIFY, not by the 30 s poll
        assert rec.status is TaskStatus.COMPLETED and loop.time() - t0 < 5
    await app.aclose()
