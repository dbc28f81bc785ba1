"""PostgreSQL-specific behaviour: migrations, the claim's query plan, LISTEN/NOTIFY recovery."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from litetask_async import ConfigurationError, LiteTask, TaskStatus
from litetask_async.brokers import postgres_sql as sql
from litetask_async.brokers.postgres import PostgresBroker, asyncpg_dsn
from tests import jobs
from tests.conformance.test_broker_contract import finish_and_claim_first_round
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


async def test_claim_reads_the_claim_index_whatever_the_backlog_and_statistics(postgres_url: str) -> None:
    """The claim reads litetask_queue_claim in claim order and stops after the rows it takes:
    never the finished tasks, never "every due row, then sort", also when the statistics are
    stale (a backlog enqueued after the last ANALYZE: the usual state of a queue table)."""
    app = LiteTask(postgres_url)
    await app.broker()
    claim = sql.CLAIM.replace("$1", "'w'").replace("$2", "1").replace("$3", "10").replace("$4", "NULL")
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        await conn.execute("""
            INSERT INTO litetask_done (seq, id, name, status, args, kwargs, finished_at)
            SELECT nextval('litetask_seq'), 'done-' || g, 'x', 'completed', '[]', '{}', now()
            FROM generate_series(1, 50000) g
        """)
        await conn.execute("ANALYZE litetask_queue")  # empty: the statistics say "no rows"
        await conn.execute("ANALYZE litetask_done")
        await conn.execute("""
            INSERT INTO litetask_queue (id, name, args, kwargs)
            SELECT 'todo-' || g, 'x', '[]', '{}' FROM generate_series(1, 30000) g
        """)
        plans = []
        for _ in range(2):  # stale statistics, then fresh ones (each claims 10 rows)
            plans.append("\n".join(r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + claim)))
            await conn.execute("ANALYZE litetask_queue")
    finally:
        await conn.close()
    for plan in plans:
        assert "litetask_queue_claim" in plan, plan
        assert "litetask_done" not in plan and "Seq Scan" not in plan and "Sort" not in plan, plan
    await app.aclose()


async def test_migration_7_moves_active_tasks_and_keeps_every_record(postgres_url: str) -> None:
    """A database at schema 6 with tasks in every state: after migration 7 the pending and
    running ones are in litetask_queue, the finished ones in litetask_done, litetask_tasks
    (now a view) shows all of them unchanged, seq goes on from where it was, a unique key
    held by a pending task still holds, and the tasks run."""
    from litetask_async.brokers.postgres import migrate

    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        async with conn.transaction():
            await conn.execute(sql.CREATE_META)
            for version in range(1, 7):
                for stmt in sql.MIGRATIONS[version]:
                    await conn.execute(stmt)
                await conn.execute(sql.SET_VERSION, str(version))
        await conn.execute("""
            INSERT INTO litetask_tasks (id, name, status, args, kwargs, result, finished_at, unique_key,
                                        worker_id, attempts, heartbeat_at)
            VALUES ('p1', 'tests.jobs.aadd', 'pending', '[1, 2]', '{}', NULL, NULL, 'key-1', NULL, 0, NULL),
                   ('r1', 'tests.jobs.aadd', 'running', '[3, 4]', '{}', NULL, NULL, NULL, 'w-gone', 1,
                    now() - interval '1 hour'),
                   ('c1', 'tests.jobs.aadd', 'completed', '[5, 6]', '{}', '11', now(), 'key-1', 'w', 1, now()),
                   ('f1', 'tests.jobs.aadd', 'failed', '[7, 8]', '{}', NULL, now(), NULL, 'w', 1, now())
        """)
        await conn.execute("DELETE FROM litetask_tasks WHERE id = 'f1'")  # a purged task: seq moved on
        await conn.execute("""
            INSERT INTO litetask_tasks (id, name, status, args, kwargs, finished_at)
            VALUES ('x1', 'tests.jobs.aadd', 'cancelled', '[]', '{}', now())
        """)
        before = {r["id"]: dict(r) for r in await conn.fetch(f"SELECT {sql.COLUMNS} FROM litetask_tasks")}
        top = await conn.fetchval("SELECT max(seq) FROM litetask_tasks")
        assert await migrate(conn) == sql.LATEST_VERSION
        after = {r["id"]: dict(r) for r in await conn.fetch(f"SELECT {sql.COLUMNS} FROM litetask_tasks")}
        assert after == before
        assert {r[0] for r in await conn.fetch("SELECT id FROM litetask_queue")} == {"p1", "r1"}
        assert {r[0] for r in await conn.fetch("SELECT id FROM litetask_done")} == {"c1", "x1"}
        assert await conn.fetchval("SELECT nextval('litetask_seq')") > top
    finally:
        await conn.close()

    app = LiteTask(postgres_url)
    t = jobs.register(app)
    assert await t["aadd"].configure(unique_key="key-1").adelay(9, 9) == "p1"  # held by the pending task
    async with running_worker(app, heartbeat_interval=0.2, heartbeat_timeout=0.5):
        assert (await app.wait("p1", 10)).result == 3
        assert (await app.wait("r1", 10)).result == 7  # rescued from its vanished worker, then run
    listed = [r.id for r in await app.list_tasks(limit=10)]
    assert listed == ["x1", "c1", "r1", "p1"]  # newest first, by the seq they had
    assert (await app.get_task("c1")).result == 11
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


async def test_finish_and_claim_is_one_statement_with_finish_and_claim_semantics(postgres_url: str) -> None:
    """finish_and_claim writes outcomes as finish() does (only the worker's own attempt; a retry
    whose task was asked to cancel ends cancelled) and claims as claim() does, in one commit."""
    from litetask_async.records import Outcome, OutcomeKind

    app = LiteTask(postgres_url)
    t = jobs.register(app)
    broker = await app.broker()
    assert isinstance(broker, PostgresBroker) and broker.combines_finish_and_claim
    a, b, c, d, e = [await t["aadd"].adelay(i, i) for i in range(5)]
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        await finish_and_claim_first_round(broker, [a, b, c, d, e])
        assert (await app.get_task(a)).status is TaskStatus.COMPLETED
        assert (await app.get_task(b)).status is TaskStatus.RUNNING
        assert (await app.get_task(c)).status is TaskStatus.CANCELLED
        assert {r[0] for r in await conn.fetch("SELECT id FROM litetask_done")} == {a, c}
        assert {r[0] for r in await conn.fetch("SELECT id FROM litetask_queue WHERE status = 'running'")} == {b, d, e}
        # a retry goes back to pending and is claimable by the next call, not by this one
        finished, claimed = await broker.finish_and_claim(
            [Outcome(d, "w1", 1, OutcomeKind.RETRY, error_json='{"type": "E"}', retry_delay=0)], "w1", 1, 5)
        assert finished == [d] and claimed == []
        assert (await app.get_task(d)).status is TaskStatus.PENDING
        assert [x.id for x in await broker.claim("w1", 1, 5)] == [d]
    finally:
        await conn.close()
    await app.aclose()


async def test_a_claim_with_an_older_snapshot_leaves_claimed_rows_unlocked(postgres_url: str) -> None:
    """Another worker's claim that began before this claim committed still sees the task
    pending. It must pass over it without locking it: a lock would make this worker's FINISH
    wait for that other claim's commit. (A claim that updated the row in place made the other
    claim follow the row to its running version and lock it; with four workers that was 26,000
    locks for 40,000 tasks.) The other claim is a cursor here: its snapshot is taken at DECLARE,
    its rows are locked at FETCH."""
    from litetask_async.records import Outcome, OutcomeKind

    app = LiteTask(postgres_url)
    t = jobs.register(app)
    broker = await app.broker()
    assert isinstance(broker, PostgresBroker)
    tid = await t["aadd"].adelay(1, 1)
    pick = sql._PICK.format(queues="NULL::text[]", limit="10")
    other = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        async with other.transaction():
            await other.execute("DECLARE pick CURSOR FOR " + pick)
            [claimed] = await broker.claim("w1", 1, 10)
            assert claimed.id == tid
            assert await other.fetch("FETCH ALL FROM pick") == []  # not pending any more
            done = await asyncio.wait_for(broker.finish(
                [Outcome(tid, "w1", 1, OutcomeKind.COMPLETED, result_json="2")]), 5)
            assert done == [tid]
    finally:
        await other.close()
    assert (await app.get_task(tid)).status is TaskStatus.COMPLETED
    await app.aclose()


async def test_enqueues_wake_the_workers_and_claims_do_not(postgres_url: str) -> None:
    """The NOTIFY trigger fires for inserted pending tasks only: a claim inserts its rows again,
    as running (see sql._take), and must not wake every idle worker."""
    app = LiteTask(postgres_url)
    t = jobs.register(app)
    broker = await app.broker()
    got: list[str] = []

    async def notified() -> list[str]:
        """The notifications received within 2.5 s (from the first one on)."""
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        received = list(got)
        got.clear()
        return received

    listener = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        await listener.add_listener(sql.CHANNEL, lambda *args: got.append(args[3]))
        await t["aadd"].adelay_many([((i, i), {}) for i in range(3)])
        assert await notified() == [""]
        assert len(await broker.claim("w1", 1, 10)) == 3
        await asyncio.sleep(0.5)
        assert got == []
        await t["aadd"].adelay(9, 9)
        assert await notified() == [""]
    finally:
        await listener.close()
    await app.aclose()


async def test_workers_vacuum_the_queue_table_every_so_many_tasks(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead claim-index entries are cleared by the workers' own VACUUM (autovacuum visits a
    database once a minute at most), so the claim does not step over more and more of them."""
    from litetask_async.brokers import postgres as pg

    monkeypatch.setattr(pg, "VACUUM_EVERY", 10)
    app = LiteTask(postgres_url)
    t = jobs.register(app)
    ids = await t["aadd"].adelay_many([((i, i), {}) for i in range(30)])
    async with running_worker(app):
        for tid in ids:
            assert (await app.wait(tid, 10)).status is TaskStatus.COMPLETED
        await _wait_for_vacuum(postgres_url, 0)
    await app.aclose()


async def _vacuum_count(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(
        "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'litetask_queue'") or 0)


async def _wait_for_vacuum(postgres_url: str, before: int) -> None:
    """Until litetask_queue was vacuumed more than ``before`` times (the statistics lag)."""
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        for _ in range(50):
            if await _vacuum_count(conn) > before:
                return
            await asyncio.sleep(0.1)
        pytest.fail("litetask_queue was not vacuumed")
    finally:
        await conn.close()


async def test_the_vacuum_is_paced_by_every_workers_claims(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With several workers each one finishes only its share of the tasks, but the dead entries
    of all their claims pile up at the head of the claim index: a worker vacuums once all
    claims together (seen from the claimed tasks' seq) moved VACUUM_EVERY past its last one.
    Worker A here claims 2 tasks, B claims 20, A claims 2 more: A vacuums though it claimed 4.
    The workers take turns: B, due next, does not vacuum again so soon after A."""
    from litetask_async.brokers import postgres as pg

    monkeypatch.setattr(pg, "VACUUM_EVERY", 10)
    app = LiteTask(postgres_url)
    t = jobs.register(app)
    await t["aadd"].adelay_many([((i, i), {}) for i in range(40)])
    a, b = PostgresBroker(postgres_url), PostgresBroker(postgres_url)
    await a.open()
    await b.open()
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        before = await _vacuum_count(conn)
        assert len(await a.claim("a", 1, 2)) == 2
        assert len(await b.claim("b", 2, 20)) == 20  # B's first claim: its starting mark
        assert a._vacuum_task is None and b._vacuum_task is None
        assert len(await a.claim("a", 1, 2)) == 2
        assert a._vacuum_task is not None  # A claimed 4 tasks, but the head moved 22 past its mark
        await a._vacuum_task
        await _wait_for_vacuum(postgres_url, before)
        # B's mark is from its first claim: 8 more make it due too, but A vacuumed since (at
        # the 24th task): B's turn is lost, and B learns A's mark
        assert len(await b.claim("b", 2, 8)) == 8
        assert b._vacuum_task is not None
        await b._vacuum_task
        assert b._vacuum_mark == a._head
        assert await conn.fetchval("SELECT value FROM litetask_meta WHERE key = 'vacuum_seq'") == str(a._head)
        assert await _vacuum_count(conn) == before + 1
    finally:
        await conn.close()
        await a.close()
        await b.close()
        await app.aclose()


async def test_outcomes_do_not_wait_for_a_stuck_claim(postgres_url: str) -> None:
    """Outcomes normally go with the next claim (one statement); a claim stuck in flight (a
    statement waiting on a cut network) must not hold back the outcomes of tasks that finish
    meanwhile: after CLAIM_PATIENCE the flusher writes them on its own."""
    app = LiteTask(postgres_url)
    started = asyncio.Event()

    @app.task
    async def brief() -> str:
        started.set()
        await asyncio.sleep(1.0)
        return "done"

    release = asyncio.Event()
    try:
        broker = await app.broker()
        real_claim = broker.claim

        async def stuck_claim(*args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
            if started.is_set():
                await release.wait()
            return await real_claim(*args, **kwargs)  # type: ignore[arg-type]

        broker.claim = stuck_claim  # type: ignore[method-assign]
        async with running_worker(app, concurrency=2, poll_interval=0.05):
            try:
                tid = await brief.adelay()
                rec = await app.wait(tid, 10)  # written while the next claim is still stuck
                assert rec.status is TaskStatus.COMPLETED and rec.result == "done"
            finally:
                release.set()  # or the worker cannot stop: its claim loop waits on it
    finally:
        release.set()
        await app.aclose()
