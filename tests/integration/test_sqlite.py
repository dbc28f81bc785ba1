"""SQLite-specific behaviour: group commit, WAL, file errors."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from litetask_async import ConfigurationError, LiteTask, TaskStatus
from litetask_async.brokers.sqlite import writer_for
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_thousand_concurrent_enqueues_cost_a_few_commits(tmp_path: Path) -> None:
    app = LiteTask(f"sqlite:///{tmp_path / 'gc.db'}")
    t = jobs.register(app)
    await app.broker()
    writer = writer_for(str((tmp_path / "gc.db").resolve()))
    before = writer.commits
    ids = await asyncio.gather(*(t["aadd"].adelay(i, i) for i in range(1000)))
    commits = writer.commits - before
    assert len(set(ids)) == 1000
    assert commits <= 20, f"1,000 concurrent enqueues took {commits} commits"
    with sqlite3.connect(tmp_path / "gc.db") as conn:
        assert conn.execute("SELECT count(*) FROM litetask_tasks").fetchone()[0] == 1000
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await app.aclose()


async def test_a_lone_adelay_never_blocks_the_loop_on_another_process_lock(tmp_path: Path) -> None:
    """adelay() one after another is written on the event loop (no hand-off to the writer
    thread), but only when the file's write lock is free at that instant: while another
    connection holds it, the call goes to the writer thread and waits there, and the loop
    keeps running meanwhile."""
    path = tmp_path / "lock.db"
    app = LiteTask(f"sqlite:///{path}")
    t = jobs.register(app)
    try:
        writer = writer_for(str(path.resolve()))
        await t["aadd"].adelay(0, 0)
        before = writer.commits
        for i in range(20):
            await t["aadd"].adelay(i, i)
        assert writer.commits - before == 20
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.6, lambda: other.execute("COMMIT"))
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        ticking = asyncio.ensure_future(ticker())
        release.start()
        started = time.monotonic()
        tid = await t["aadd"].adelay(20, 22)
        waited = time.monotonic() - started
        done.set()
        await ticking
        other.close()
        assert waited >= 0.4, "the enqueue did not wait for the other connection's lock"
        assert max(gaps) < 0.3, f"the event loop stalled for {max(gaps):.2f} s"
        assert (await app.get_task(tid)).args == [20, 22]
    finally:
        await app.aclose()


async def test_enqueues_written_on_the_loop_are_checkpointed(tmp_path: Path) -> None:
    """Commits on the event loop do not checkpoint (disk syncs); the writer thread does it for
    them, so the WAL file stays small without a worker: 3,000 one-by-one enqueues leave a few
    MB of WAL (34 MB when the checkpoint never reached the WAL's end, so that the WAL was never
    started again from its beginning)."""
    path = tmp_path / "wal.db"
    app = LiteTask(f"sqlite:///{path}")
    t = jobs.register(app)
    try:
        for i in range(3000):
            await t["aadd"].adelay(i, i)
        for i in range(3000):  # a sync caller's lone writes leave checkpoints to the thread too
            t["aadd"].delay(i, i)
        await asyncio.sleep(0.2)
        wal_mb = (tmp_path / "wal.db-wal").stat().st_size / 1e6
        assert wal_mb < 12, f"WAL grew to {wal_mb:.0f} MB"
    finally:
        await app.aclose()


async def test_one_failing_write_does_not_undo_its_batch_neighbours(tmp_path: Path) -> None:
    app = LiteTask(f"sqlite:///{tmp_path / 'n.db'}")
    t = jobs.register(app)
    b = await app.broker()
    first = t["aadd"].prepare([1, 1], {})
    await b.enqueue([first])
    results = await asyncio.gather(
        *(t["aadd"].adelay(i, i) for i in range(50)), b.enqueue([first]), return_exceptions=True)
    assert isinstance(results[-1], sqlite3.IntegrityError)
    assert all(isinstance(r, str) for r in results[:-1])
    with sqlite3.connect(tmp_path / "n.db") as conn:
        assert conn.execute("SELECT count(*) FROM litetask_tasks").fetchone()[0] == 51
    await app.aclose()


@pytest.mark.parametrize("url", [
    "sqlite:///:memory:",
    "sqlite://host/x.db",
    "mysql://u@h/db",
    "sqlite:///x.db?busy_timeout=soon",
    "sqlite:///x.db?journal=off",
    "no-scheme",
])
def test_bad_urls_are_refused_at_once(url: str) -> None:
    with pytest.raises(ConfigurationError):
        LiteTask(url)


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    app = LiteTask(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await app.broker()


def _database_at(db: Path, version: int) -> sqlite3.Connection:
    """A new SQLite file at schema ``version`` (migrations 1 to ``version``), as an older
    litetask_async left it; use it as a context manager (commits on exit)."""
    from litetask_async.brokers import sqlite_sql as sql

    conn = sqlite3.connect(db)
    conn.execute(sql.CREATE_META)
    for v in range(1, version + 1):
        for statement in sql.MIGRATIONS[v]:
            conn.execute(statement)
    conn.execute(sql.SET_VERSION, (str(version),))
    return conn


async def test_a_database_of_an_older_schema_is_migrated_with_its_tasks(tmp_path: Path) -> None:
    """A file at schema version 5 (before the status index was dropped) opens, migrates, and
    keeps its tasks, which run and list as before."""
    from litetask_async.brokers import sqlite_sql as sql

    db = tmp_path / "old.db"
    with _database_at(db, 5) as conn:
        conn.execute("INSERT INTO litetask_tasks (id, name, args, kwargs, created_at, run_at) "
                     "VALUES ('old1', 'tests.jobs.aadd', '[1, 2]', '{}', 1.0, 1.0)")
    app = LiteTask(f"sqlite:///{db}")
    try:
        jobs.register(app)
        async with running_worker(app):
            rec = await app.wait("old1", 20)
        assert rec.status is TaskStatus.COMPLETED and rec.result == 3
        assert [r.id for r in await app.list_tasks(status="completed")] == ["old1"]
    finally:
        await app.aclose()
    with sqlite3.connect(db) as conn:
        assert conn.execute(sql.GET_SCHEMA_VERSION).fetchone()[0] == str(sql.LATEST_VERSION)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "litetask_tasks_status_seq" not in names and "litetask_tasks_pending" in names


async def test_schema_8_is_rebuilt_keyed_by_id_with_every_task_kept(tmp_path: Path) -> None:
    """Migration 9 rebuilds the task table (WITHOUT ROWID, keyed by the id): every row and
    column survives, unique keys stay enforced, pending tasks still run in their order."""
    from litetask_async.brokers import sqlite_sql as sql
    from litetask_async.brokers.base import record_from_row
    from litetask_async.tasks import new_ids

    db = tmp_path / "v8.db"
    ids = new_ids(4)
    with _database_at(db, 8) as conn:
        insert = ("INSERT INTO litetask_tasks (id, name, queue, priority, status, args, kwargs, result, "
                  "error, errors, attempts, max_attempts, created_at, run_at, finished_at, unique_key) "
                  "VALUES (?, 'tests.jobs.aadd', ?, 0, ?, ?, '{}', ?, ?, ?, ?, 2, ?, ?, ?, ?)")
        conn.execute(insert, (ids[0], "q", "completed", "[1, 1]", "2", None, "[]", 1, 1.0, 1.0, 2.0, None))
        conn.execute(insert, (ids[1], "q", "failed", "[0, 0]", None, '{"type": "E"}', '[{"type": "E"}]',
                              2, 2.0, 2.0, 3.0, None))
        conn.execute(insert, (ids[2], "q", "pending", "[2, 3]", None, None, "[]", 0, 3.0, 3.0, None, "k"))
        conn.execute(insert, (ids[3], "q", "pending", "[4, 5]", None, None, "[]", 0, 4.0, 4.0, None, None))
        conn.row_factory = sqlite3.Row
        before = {r["id"]: record_from_row(dict(r)) for r in conn.execute("SELECT * FROM litetask_tasks")}
    app = LiteTask(f"sqlite:///{db}")
    try:
        t = jobs.register(app)
        assert {i: await app.get_task(i) for i in ids} == before
        assert [r.id for r in await app.list_tasks(queue="q")] == ids[::-1]
        assert await t["aadd"].configure(unique_key="k").adelay(9, 9) == ids[2]  # still the key's task
        async with running_worker(app):
            assert (await app.wait(ids[2], 20)).result == 5 and (await app.wait(ids[3], 20)).result == 9
    finally:
        await app.aclose()
    with sqlite3.connect(db) as conn:
        assert conn.execute(sql.GET_SCHEMA_VERSION).fetchone()[0] == str(sql.LATEST_VERSION)
        table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'litetask_tasks'").fetchone()[0]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "WITHOUT ROWID" in table and "seq" not in table
    assert not {"litetask_tasks_name_seq", "litetask_tasks_queue_seq"} & names
    assert {"litetask_tasks_pending", "litetask_tasks_finished_name", "litetask_tasks_unique"} <= names


def test_filtered_listings_read_indexes_not_the_table(tmp_path: Path) -> None:
    """Listing by name or queue reads the finished tasks' (name, id) / (queue, id) index and
    the pending and running partial indexes: never a scan of every task ever stored."""
    from litetask_async.brokers import sqlite_sql as sql
    from litetask_async.brokers.sqlite import _migrate

    conn = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    _migrate(conn)
    for states in (["final", "pending", "running"], ["one final"], ["pending"], ["running"]):
        for where in ("AND name = ?", "AND id < ? AND queue = ?"):
            parts = " UNION ALL ".join(sql.LIST_PARTS[s].format(where=where) for s in states)
            query = sql.LIST_UNION.format(parts=parts)
            params = ["x"] * query.count("?")
            for row in conn.execute("EXPLAIN QUERY PLAN " + query, params):
                detail = row[3]
                if "litetask_tasks" in detail:
                    assert "USING INDEX litetask_tasks_" in detail, (detail, states, where)
    conn.close()


def _app_with_noop(tmp_path: Path) -> tuple[LiteTask, Any]:
    app = LiteTask(f"sqlite:///{tmp_path / 'tasks.db'}")

    @app.task
    async def noop(i: int) -> int:
        return i

    return app, noop


async def test_cancelled_callers_of_a_handed_over_write_are_skipped_and_the_rest_stored(tmp_path: Path) -> None:
    """adelay() calls handed over together (the writer thread busy) whose callers are
    cancelled before the writer gets to them are not stored; the others are, and return."""
    app, noop = _app_with_noop(tmp_path)
    try:
        broker = await app.broker()
        started, release = threading.Event(), threading.Event()
        # The writer thread busy with a write of its own (a batch's writes are all marked
        # running when it begins, and a running write is not skipped).
        held = broker.writer.submit(lambda conn: started.set() or release.wait(10))
        assert await asyncio.to_thread(started.wait, 10)
        calls = [asyncio.ensure_future(noop.adelay(i)) for i in range(100)]
        await asyncio.sleep(0.05)  # all handed over, waiting for the writer
        for c in calls[::2]:
            c.cancel()
        await asyncio.wait(calls[::2])  # their callers have seen the cancellation (and said so)
        release.set()
        await asyncio.wrap_future(held)
        kept = await asyncio.wait_for(asyncio.gather(*calls[1::2]), 10)
        assert all(c.cancelled() for c in calls[::2])
        stored = {r.id for r in await app.list_tasks(limit=1000)}
        assert stored == set(kept) and len(kept) == 50
    finally:
        await app.aclose()


async def test_a_cancelled_read_leaves_no_stale_snapshot(tmp_path: Path) -> None:
    """A read cancelled halfway (a worker stopping in the middle of next_due()) must not leave
    its statement open on the shared reader: its snapshot would hide every later commit from
    get() (a task just enqueued was 'not found')."""
    app, noop = _app_with_noop(tmp_path)
    try:
        broker = await app.broker()
        for i in range(50):
            await noop.adelay(i)
            read = asyncio.ensure_future(broker.next_due(None))
            await asyncio.sleep(0)
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            tid = await noop.adelay(i)
            assert await broker.get(tid) is not None, f"round {i}: a committed task is not visible"
    finally:
        await app.aclose()


def test_claim_and_due_queries_read_only_the_pending_indexes(tmp_path: Path) -> None:
    """The claim, the limited tasks' claim and "when is the next task due" read the partial
    indexes of pending and running tasks (or rows by their id), never an index or a scan of every
    task ever stored: with 200,000 finished tasks the limited claim walked (name, seq) and took
    127 ms per claim that found fewer tasks than it asked for."""
    from litetask_async.brokers import sqlite_sql as sql
    from litetask_async.brokers.sqlite import _migrate

    conn = sqlite3.connect(tmp_path / "plans.db", isolation_level=None)
    _migrate(conn)
    partial = ("litetask_tasks_pending", "litetask_tasks_limited_due", "litetask_tasks_limited",
               "PRIMARY KEY (id=?)")
    for query, params in [(sql.CLAIM.format(queues=""), ("w", 1, 1.0, 1.0, 1.0, 10)),
                          (sql.CLAIM_LIMITED.format(queues="AND t.queue IN (?)"), (1.0, "q", "w", 1, 1.0, 1.0, 10)),
                          (sql.EARLIEST_PENDING.format(queues=""), ()),
                          (sql.EARLIEST_PENDING.format(queues="AND queue IN (?)"), ("q",))]:
        for row in conn.execute("EXPLAIN QUERY PLAN " + query, params):
            detail = row[3]
            if "litetask_tasks" in detail or " t " in f" {detail} ":
                assert any(index in detail for index in partial), (detail, query)
    conn.close()
