"""Through PgBouncer in transaction pooling mode (Debian's pgbouncer, started by the tests in
front of the test PostgreSQL, with a server pool of 2 so that one client's statements really
land on different server connections).

With ``?pooler=transaction`` the broker uses no named prepared statements; enqueueing (single,
batch, in the caller's transaction) and a real worker process work through the pooler. LISTEN
needs a session: the worker either opens it straight to PostgreSQL (``listen_host`` /
``listen_port``), or polls. Both are tested.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from litetask_async import ConfigurationError, LiteTask, TaskStatus
from litetask_async.brokers.postgres import PostgresBroker, asyncpg_dsn
from tests.acceptance.helpers import effects, start_worker, stop_worker
from tests.pgbouncer import PgBouncer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def bouncer(postgres_server_url: str) -> Iterator[PgBouncer]:
    b = PgBouncer(postgres_server_url, pool_mode="transaction", pool_size=2)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def dbname(postgres_url: str) -> str:
    return urllib.parse.urlsplit(postgres_url).path.lstrip("/")


def _direct(postgres_url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(postgres_url)
    return u.hostname or "127.0.0.1", u.port or 5432


async def test_enqueue_single_batch_and_in_transaction(bouncer: PgBouncer, dbname: str) -> None:
    app = LiteTask(bouncer.url(dbname, "pooler=transaction"))

    @app.task
    async def noop(i: int) -> int:
        return i

    try:
        # many at once: with 2 server connections, consecutive statements of one client
        # connection are served by different server connections
        ids = await asyncio.gather(*(noop.adelay(i) for i in range(300)))
        ids += await noop.adelay_many([((i,), {}) for i in range(500)])
        uniq = noop.configure(unique_key="only-one")
        ids += await uniq.adelay_many([((i,), {}) for i in range(3)])
        ids.append(await asyncio.to_thread(noop.delay, 7))
        # the caller's own transaction, on an engine through the pooler: the asyncpg dialect with
        # its prepared-statement caches off (as SQLAlchemy's docs say for PgBouncer)
        engine = create_async_engine(
            bouncer.url(dbname).replace("postgresql://", "postgresql+asyncpg://"),
            connect_args={"statement_cache_size": 0, "prepared_statement_cache_size": 0})
        try:
            async with engine.begin() as conn:
                in_tx = await noop.adelay(1000, connection=conn)
            async with engine.connect() as conn:
                trans = await conn.begin()
                rolled_back = await noop.adelay(1001, connection=conn)
                await trans.rollback()
        finally:
            await engine.dispose()
        assert len(set(ids)) == 300 + 500 + 1 + 1
        assert (rec := await app.get_task(in_tx)) is not None and rec.status is TaskStatus.PENDING
        assert await app.get_task(rolled_back) is None
        stats = await app.stats()
        assert stats["totals"]["pending"] == 300 + 500 + 1 + 1 + 1, stats
    finally:
        await app.aclose()


async def test_options_stay_out_of_the_connection_and_are_checked(postgres_url: str) -> None:
    host, port = _direct(postgres_url)
    url = f"{postgres_url}?pooler=transaction&listen_host={host}&listen_port={port}"
    opts = PostgresBroker(url).options
    assert opts.transaction_pooler and opts.listen_host == host and opts.listen_port == port
    assert "pooler" not in asyncpg_dsn(url) and "listen" not in asyncpg_dsn(url)
    assert PostgresBroker(f"{url}&pool_size=3").pool_size == 3 and PostgresBroker(url).pool_size == 10
    app = LiteTask(url)  # straight to PostgreSQL: the options do no harm there
    try:
        rec = await app.get_task(await app.task(name="x")(_noop).adelay())
        assert rec is not None and rec.status is TaskStatus.PENDING
    finally:
        await app.aclose()
    for bad, why in ((f"{postgres_url}?pooler=statement", "pooler='statement'"),
                     (f"{postgres_url}?pooler=transaction&listen_port=99999", "not a TCP port"),
                     (f"{postgres_url}?listen_port=x", "not a TCP port"),
                     (f"{postgres_url}?pool_size=0", "from 1 to 1000")):
        with pytest.raises(ConfigurationError, match=why):
            LiteTask(bad)


async def _noop() -> None:
    return None


def _worker_round(url: str, out: Path, log: Path, n: int) -> str:
    from tests import xproc_app

    async def enqueue() -> list[str]:
        app = LiteTask(url)
        task = app.task(name=xproc_app.effect_async.name)(xproc_app.effect_async.fn)
        try:
            return list(await task.adelay_many([((str(out), i), {}) for i in range(n)]))
        finally:
            await app.aclose()

    async def wait_all(ids: list[str]) -> list[TaskStatus]:
        app = LiteTask(url)
        try:
            return [(await app.wait(i, 60)).status for i in ids]
        finally:
            await app.aclose()

    proc = start_worker(url, log)
    try:
        ids = asyncio.run(enqueue())
        statuses = asyncio.run(wait_all(ids))
    finally:
        stop_worker(proc)
    text = log.read_text(errors="replace")
    assert statuses == [TaskStatus.COMPLETED] * n, text[-3000:]
    assert sorted(effects(out).items()) == [(i, 1) for i in range(n)], text[-3000:]
    assert "prepared statement" not in text, text[-3000:]
    return text


@pytest.mark.slow
def test_worker_through_pgbouncer_listening_directly(bouncer: PgBouncer, dbname: str, postgres_url: str,
                                                     tmp_path: Path) -> None:
    host, port = _direct(postgres_url)
    url = bouncer.url(dbname, f"pooler=transaction&listen_host={host}&listen_port={port}")
    assert PostgresBroker(url)._listen_dsn == asyncpg_dsn(postgres_url)
    text = _worker_round(url, tmp_path / "effects.txt", tmp_path / "worker.log", 500)
    assert "LISTEN connection lost" not in text


@pytest.mark.slow
def test_worker_through_pgbouncer_polling(bouncer: PgBouncer, dbname: str, tmp_path: Path) -> None:
    url = bouncer.url(dbname, "pooler=transaction")
    assert PostgresBroker(url)._listen_dsn is None  # no LISTEN through a transaction pooler
    _worker_round(url, tmp_path / "effects.txt", tmp_path / "worker.log", 500)


async def test_listen_goes_to_the_direct_connection(bouncer: PgBouncer, dbname: str, postgres_url: str) -> None:
    """The broker's LISTEN session is on PostgreSQL itself: a NOTIFY from another session
    wakes a waiting broker at once."""
    host, port = _direct(postgres_url)
    broker = PostgresBroker(bouncer.url(dbname, f"pooler=transaction&listen_host={host}&listen_port={port}"))
    await broker.open()
    try:
        waiter = asyncio.create_task(broker.wait_for_work(30))
        for _ in range(200):
            if broker._listening:
                break
            await asyncio.sleep(0.05)
        assert broker._listening
        await asyncio.sleep(0.1)
        if waiter.done():  # the first wake-up after connecting (missed notifications): wait again
            waiter = asyncio.create_task(broker.wait_for_work(30))
        conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
        try:
            await conn.execute("SELECT pg_notify('litetask_tasks', '')")
        finally:
            await conn.close()
        await asyncio.wait_for(waiter, 10)
    finally:
        await broker.close()
