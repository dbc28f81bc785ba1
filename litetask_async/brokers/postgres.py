"""PostgreSQL broker: many workers on many machines against one database.

- Hot paths run on raw asyncpg connections from a small pool per event loop (prepared statements
  are cached per connection); SQLAlchemy parses URLs and carries the transactional enqueue on the
  caller's own ``AsyncConnection``. See :class:`_Pool` for why not SQLAlchemy's pool.
- Pending and running tasks live in ``litetask_queue`` (few, partial indexes; fillfactor for HOT
  heartbeats); a task that ends moves to ``litetask_done`` (insert-only, the operator views'
  indexes) in the statement that writes its outcome; ``litetask_tasks`` is a view of both.
- Claims are one ``FOR UPDATE SKIP LOCKED`` statement on the claim index, whose order is the
  claim order, so a claim reads the rows it takes whatever the backlog.
- Idle workers are woken by ``LISTEN/NOTIFY`` on a dedicated connection (re-established if lost),
  with polling as a bounded fallback.
- Schema: versioned migrations under an advisory lock, applied on first use unless the app was
  created with ``auto_migrate=False`` (then run ``litetask migrate``).
- Behind a connection pooler in transaction mode (PgBouncer): ``?pooler=transaction`` in the URL
  turns off named prepared statements (asyncpg's unnamed ones are parsed and executed before
  one Sync, so the pooler keeps them on one server connection); LISTEN needs a session, so it
  goes to ``listen_host``/``listen_port`` (the database itself) when given, else workers poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from ..exceptions import BrokerUnavailable, ConfigurationError, TaskNotFound
from ..records import ClaimedTask, LogRecord, NewTask, Outcome, OutcomeKind, TaskRecord, WorkerInfo
from . import postgres_sql as sql
from .base import (
    Broker,
    RunningUpdate,
    bounded_delay,
    bucket_case,
    log_from_row,
    record_from_row,
    redact_url,
    stats_dict,
    worker_from_row,
    worker_lost_error,
)

log = logging.getLogger("litetask_async.postgres")

_CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                      asyncpg.CannotConnectNowError, ConnectionError)


#: URL query parameters read by the broker itself (the others go to asyncpg as server settings).
OPTIONS = ("pooler", "listen_host", "listen_port", "pool_size")


@dataclass(frozen=True)
class ConnectOptions:
    """The broker's own URL parameters: ``pooler=transaction`` when a pooler in transaction mode
    (PgBouncer's ``pool_mode = transaction``) stands between us and PostgreSQL, where the
    LISTEN connection goes (``listen_host``, ``listen_port``: the database itself), and the most
    pooled connections a process opens per event loop (``pool_size``, default 10)."""

    transaction_pooler: bool = False
    listen_host: str | None = None
    listen_port: int | None = None
    pool_size: int | None = None


def _parse(url: str) -> tuple[URL, ConnectOptions]:
    try:
        u = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"not a valid PostgreSQL URL: {redact_url(url)!r} ({exc})") from None
    if u.drivername not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise ConfigurationError(f"not a PostgreSQL URL (driver {u.drivername!r}): {redact_url(url)!r}")
    q = {k: v for k, v in u.query.items() if k in OPTIONS}
    for k, v in q.items():
        if not isinstance(v, str):
            raise ConfigurationError(f"URL parameter {k!r} is given twice in {redact_url(url)!r}")
    pooler = q.get("pooler", "none")
    if pooler not in ("transaction", "session", "none"):
        raise ConfigurationError(f"URL parameter pooler={pooler!r} in {redact_url(url)!r}: use 'transaction' "
                                 "(PgBouncer's pool_mode = transaction), 'session' or 'none'")
    port = _int_option(url, q, "listen_port", 1, 65535, "is not a TCP port")
    size = _int_option(url, q, "pool_size", 1, 1000, "must be a whole number from 1 to 1000")
    opts = ConnectOptions(pooler == "transaction", q.get("listen_host"), port, size)  # type: ignore[arg-type]
    return u.difference_update_query(OPTIONS), opts


def _int_option(url: str, q: dict[str, Any], key: str, low: int, high: int, why: str) -> int | None:
    if key not in q:
        return None
    try:
        value = int(q[key])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigurationError(f"URL parameter {key}={q[key]!r} in {redact_url(url)!r} {why}")
    return value


def _render(u: URL, driver: str) -> str:
    return u.set(drivername=driver).render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://``/``postgres://``/``postgresql+asyncpg://`` to SQLAlchemy's asyncpg URL
    (without the broker's own parameters, :data:`OPTIONS`)."""
    return _render(_parse(url)[0], "postgresql+asyncpg")


def asyncpg_dsn(url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg wants (without the broker's own parameters)."""
    return _render(_parse(url)[0], "postgresql")


def _listen_dsn(u: URL, opts: ConnectOptions) -> str | None:
    """Where the LISTEN connection goes: ``listen_host``/``listen_port`` when given; None (no
    LISTEN: workers poll) behind a transaction pooler without them, which has no sessions."""
    if opts.listen_host is None and opts.listen_port is None:
        return None if opts.transaction_pooler else _render(u, "postgresql")
    if opts.listen_host is not None:
        u = u.set(host=opts.listen_host)
    if opts.listen_port is not None:
        u = u.set(port=opts.listen_port)
    return _render(u, "postgresql")


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to the latest version; safe when many processes do it at once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.MIGRATION_LOCK)
        await conn.execute(sql.CREATE_META)
        current = int(await conn.fetchval(sql.GET_VERSION) or 0)
        for version in range(current + 1, sql.LATEST_VERSION + 1):
            for stmt in sql.MIGRATIONS[version]:
                await conn.execute(stmt)
            await conn.execute(sql.SET_VERSION, str(version))
            log.info("litetask schema migrated to version %d", version)
        return sql.LATEST_VERSION


async def migrate_database(url: str) -> int:
    """Connect to ``url`` and apply pending migrations (``litetask migrate``)."""
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    except _CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"cannot connect to PostgreSQL to migrate: {exc}") from exc
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def schema_version(conn: asyncpg.Connection) -> int:
    if not await conn.fetchval(sql.META_EXISTS):
        return 0
    return int(await conn.fetchval(sql.GET_VERSION) or 0)


class PostgresBroker(Broker):
    """Broker over PostgreSQL; see the module docstring."""

    poll_interval = 1.0
    combines_finish_and_claim = True

    def __init__(self, url: str, *, auto_migrate: bool = True, pool_size: int = 10) -> None:
        self.url = url
        u, self.options = _parse(url)
        self._sa_url = _render(u, "postgresql+asyncpg")
        self._dsn = _render(u, "postgresql")
        self._listen_dsn = _listen_dsn(u, self.options)
        self.auto_migrate = auto_migrate
        self.pool_size = self.options.pool_size or pool_size
        self._pool: _Pool | None = None
        self._wake = asyncio.Event()
        self._listener_task: asyncio.Task[None] | None = None
        self._listening = False
        self._closing = asyncio.Event()
        self._finished_since_vacuum = 0
        self._vacuum_task: asyncio.Task[None] | None = None
        self._vacuum_mark: int | None = None  # the highest claimed seq at the last vacuum (see _claimed)
        self._head: int | None = None  # the highest seq of this broker's latest claim (see _claimed)
        self._may_vacuum: bool | None = None  # unknown until the first try
        self._clock_offset: float | None = None  # see clock_offset()

    # --- connections ---

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A raw asyncpg connection from the broker's pool; connection failures become
        BrokerUnavailable."""
        if self._pool is None:
            raise RuntimeError("broker is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"PostgreSQL at {self._redacted()} is unavailable: {exc}") from exc
        except TimeoutError as exc:  # no answer within the command timeout: a cut network, a hung server
            raise BrokerUnavailable(f"PostgreSQL at {self._redacted()} did not answer in time") from exc
        except Exception as exc:
            if _is_connection_error(exc):
                raise BrokerUnavailable(f"PostgreSQL at {self._redacted()} is unavailable: {exc}") from exc
            raise

    def _redacted(self) -> str:
        return make_url(self._sa_url).render_as_string(hide_password=True)

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = _Pool(self._dsn, self.pool_size, self.options.transaction_pooler)
        try:
            async with self._conn() as conn:
                if self.auto_migrate:
                    await migrate(conn)
                elif await schema_version(conn) < sql.LATEST_VERSION:
                    raise ConfigurationError(
                        "the litetask schema in this database is missing or old; run "
                        "`litetask migrate` (or `await app.migrate()`), or create the app with auto_migrate=True")
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    async def close(self) -> None:
        task, self._listener_task = self._listener_task, None
        vacuum, self._vacuum_task = self._vacuum_task, None
        if vacuum is not None and not vacuum.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(vacuum), 15)
        pool, self._pool = self._pool, None
        try:
            if task is not None and not task.done():
                # Ask the listener to stop rather than cancel it mid-connect: asyncpg does not
                # clean up a connection attempt cancelled halfway.
                self._closing.set()
                try:
                    await asyncio.wait_for(asyncio.shield(task), 15)
                except Exception:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            if pool is not None:
                await pool.close()

    async def migrate(self) -> int:
        """Apply pending schema migrations; returns the schema version."""
        async with self._conn() as conn:
            return await migrate(conn)

    # --- keeping the claim cheap ---

    def _finished(self, n: int) -> None:
        """Count tasks that left litetask_queue; every VACUUM_EVERY of them, vacuum it.

        A claimed task's entry stays in the claim index, dead, until the table is vacuumed;
        each claim steps over those at the head of the index (~13 ns each: about 1 ms per claim
        after 50,000 tasks). Autovacuum looks at a database once a minute at most
        (autovacuum_naptime is server-wide), and at 10,000 tasks/s that lets the claim cost
        grow to ~10 ms. So the workers vacuum the table themselves, in the background, once per
        VACUUM_EVERY tasks claimed by all of them together (they take turns: _vacuum_queue), or
        finished by this one. The table is small, and pages that only hold waiting tasks are
        skipped through the visibility map."""
        self._finished_since_vacuum += n
        if self._finished_since_vacuum >= VACUUM_EVERY:
            self._vacuum_soon()

    def _claimed(self, rows: Sequence[Any]) -> None:
        """Pace the VACUUM by every worker's claims, not only this one's: the claims leave
        their dead entries at the head of the claim index whoever made them, and with four
        workers each one counted a quarter of them (no vacuum during 20,000 tasks: the claim of
        10 read 100 buffers, 0.54 ms, at the end). Tasks are claimed roughly in ``seq`` order,
        so the highest seq a claim returned (a row's 9th column), minus the one at the last
        vacuum this worker knows of, is about how many tasks all workers together claimed since."""
        if not rows:
            return
        head = self._head = max(row[8] for row in rows)
        if self._vacuum_mark is None or head < self._vacuum_mark:
            self._vacuum_mark = head
        elif head - self._vacuum_mark >= VACUUM_EVERY:
            self._vacuum_soon()

    def _vacuum_soon(self) -> None:
        if (self._may_vacuum is not False and (self._vacuum_task is None or self._vacuum_task.done())
                and self._pool is not None):
            self._finished_since_vacuum = 0
            self._vacuum_mark = None  # set again by the next claim, or by a lost turn
            self._vacuum_task = asyncio.create_task(self._vacuum_queue(), name="litetask-pg-vacuum")

    async def _vacuum_queue(self) -> None:
        """VACUUM litetask_queue, if this worker wins the turn (sql.TAKE_VACUUM_TURN): every
        worker would otherwise vacuum once per VACUUM_EVERY claims (four workers: 12 vacuums
        for 40,000 tasks instead of 4, each making every connection plan its statements again)."""
        try:
            async with self._conn() as conn:
                if self._may_vacuum is None:
                    self._may_vacuum = bool(await conn.fetchval(sql.MAY_VACUUM))
                    if not self._may_vacuum:
                        log.info("not the owner of litetask_queue: leaving its vacuuming to autovacuum")
                        return
                head = self._head
                if head is not None:
                    turn = await conn.fetchrow(sql.TAKE_VACUUM_TURN, head, VACUUM_EVERY)
                    won, last = turn if turn is not None else (True, None)
                    if not won:  # another worker vacuumed since the claims passed ``last``
                        self._vacuum_mark = head if last is None else min(last, head)
                        return
                await conn.execute(sql.VACUUM_QUEUE)
        except Exception as exc:  # best effort: autovacuum remains
            log.debug("vacuum of litetask_queue failed: %s", exc)

    # --- LISTEN/NOTIFY ---

    async def _listen_forever(self) -> None:
        backoff = 0.5
        while not self._closing.is_set():
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._listen_dsn, timeout=10)
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(sql.CHANNEL, self._on_notify)
                self._listening = True
                backoff = 0.5
                self._wake.set()  # we may have missed notifications while reconnecting
                while not lost.is_set() and not self._closing.is_set():
                    # A cheap liveness probe: a silently dropped connection is noticed here.
                    await _wait_first(lost.wait(), self._closing.wait(), timeout=10)
                    if not lost.is_set() and not self._closing.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), 10)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._closing.is_set():
                    log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, backoff)
            finally:
                self._listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await _wait_first(self._closing.wait(), timeout=backoff)
            backoff = min(backoff * 2, 10.0)

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    async def list_tasks(self, *, status: str | None = None, name: str | None = None,
                         queue: str | None = None, limit: int = 50,
                         before: str | None = None) -> list[TaskRecord]:
        async with self._conn() as conn:
            cursor = None
            if before is not None:
                cursor = await conn.fetchval(sql.SEQ_OF, before)
                if cursor is None:
                    raise TaskNotFound(f"no task with id {before!r} (the 'before' cursor)")
            rows = await conn.fetch(sql.LIST, status, name, queue, limit, cursor)
        return [record_from_row(dict(r)) for r in rows]

    async def retry(self, task_id: str) -> bool:
        async with self._conn() as conn:
            if await conn.fetchval(sql.RETRY, task_id) is not None:
                await conn.execute(sql.NOTIFY, sql.CHANNEL)
                return True
            if not await conn.fetchval(sql.EXISTS, task_id):
                raise TaskNotFound(f"no task with id {task_id!r}")
            return False

    async def stats(self) -> dict[str, Any]:
        async with self._conn() as conn:
            counts = [tuple(r) for r in await conn.fetch(sql.STATS_COUNTS)]
            oldest = await conn.fetchval(sql.OLDEST_DUE)
            recent = {r[0]: r[1] for r in await conn.fetch(sql.FINISHED_SINCE)}
        return stats_dict(counts, oldest, recent)

    async def register_worker(self, info: WorkerInfo) -> None:
        async with self._conn() as conn:
            await conn.execute(sql.PRUNE_WORKERS)
            await conn.execute(sql.UPSERT_WORKER, info.id, info.hostname, info.pid,
                               json.dumps(info.queues), info.concurrency, info.started_at.timestamp())

    async def worker_heartbeat(self, worker_id: str, running: int) -> None:
        async with self._conn() as conn:
            await conn.execute(sql.WORKER_HEARTBEAT, worker_id, running)

    async def unregister_worker(self, worker_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(sql.DELETE_WORKER, worker_id)

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.LIVE_WORKERS, float(alive_within))
        return [worker_from_row(dict(r)) for r in rows]

    async def add_logs(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        async with self._conn() as conn:
            await conn.execute(sql.INSERT_LOGS, [r.task_id for r in records], [r.attempt for r in records],
                               [r.at.timestamp() for r in records], [r.level for r in records],
                               [r.message.replace("\x00", "\\x00") for r in records])

    async def task_logs(self, task_id: str, limit: int = 1000) -> list[LogRecord]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.TASK_LOGS, task_id, limit)
        return [log_from_row(dict(r)) for r in rows]

    async def name_counts(self) -> list[tuple[str, str, int, int]]:
        async with self._conn() as conn:
            return [(r[0], r[1], r[2], r[3]) for r in await conn.fetch(sql.NAME_COUNTS)]

    async def durations(self) -> list[tuple[str, int, int, float]]:
        query = sql.DURATIONS.format(bucket=bucket_case("extract(epoch FROM finished_at - started_at)"))
        async with self._conn() as conn:
            return [(r[0], r[1], r[2], r[3] or 0.0) for r in await conn.fetch(query)]

    async def throughput(self, window: float, bucket: float) -> list[tuple[float, int, int]]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.THROUGHPUT, float(bucket), float(window))
        return [(r[0], r[1], r[2]) for r in rows]

    async def wait_for_work(self, timeout: float) -> None:
        if self._listener_task is None and self._pool is not None and self._listen_dsn is not None:
            # Only processes that wait for work listen: a web process that just enqueues holds
            # no extra connection and is not sent every notification.
            self._listener_task = asyncio.create_task(self._listen_forever(), name="litetask-pg-listener")
        if not self._listening:
            timeout = min(timeout, self.poll_interval)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # --- the contract ---

    async def enqueue(self, tasks: Sequence[NewTask], connection: AsyncConnection | None = None) -> list[str]:
        if not tasks:
            return []
        if connection is not None:
            return [await self._enqueue_in(connection, t) for t in tasks]
        first = tasks[0]
        if first.unique_key is None and all(
                t.unique_key is None and t.name == first.name and t.queue == first.queue
                and t.priority == first.priority and t.max_attempts == first.max_attempts
                and t.countdown == first.countdown and t.eta == first.eta
                and t.max_concurrency == first.max_concurrency and t.trace_context == first.trace_context
                for t in tasks):
            sep, seps = sql.UNIT_SEP, len(tasks) - 1
            ids = [t.id for t in tasks]
            joined = (sep.join(ids), sep.join([t.args_json for t in tasks]),
                      sep.join([t.kwargs_json for t in tasks]))
            if all(text.count(sep) == seps for text in joined):  # else: an id holds the separator
                async with self._conn() as conn:
                    await conn.execute(
                        sql.INSERT_UNIFORM, *joined, first.name, first.queue, first.priority,
                        first.max_attempts, first.countdown, first.eta, first.max_concurrency,
                        first.trace_context)
                return ids
        used: dict[str, str] = {}  # new task's id -> the id that stands for it
        pending = list(tasks)
        async with self._conn() as conn:
            for _ in range(10):
                inserted = {r[0] for r in await conn.fetch(
                    sql.INSERT_MANY, [t.id for t in pending], [t.name for t in pending],
                    [t.queue for t in pending], [t.priority for t in pending],
                    [t.args_json for t in pending], [t.kwargs_json for t in pending],
                    [t.max_attempts for t in pending], [t.countdown for t in pending],
                    [t.eta for t in pending], [t.unique_key for t in pending],
                    [t.max_concurrency for t in pending], [t.trace_context for t in pending])}
                used.update((t.id, t.id) for t in pending if t.id in inserted)
                rest = [t for t in pending if t.id not in inserted]
                if not rest:
                    return [used[t.id] for t in tasks]
                # Skipped for a unique key held by an active task: that task stands for them.
                held: dict[str | None, str] = {
                    r[0]: r[1] for r in await conn.fetch(sql.ACTIVE_BY_UNIQUE_KEYS, [t.unique_key for t in rest])}
                used.update((t.id, held[t.unique_key]) for t in rest if t.unique_key in held)
                pending = [t for t in rest if t.id not in used]  # the holder finished meanwhile
                if not pending:
                    return [used[t.id] for t in tasks]
        raise BrokerUnavailable("unique-key enqueue did not settle after 10 tries")

    async def _enqueue_in(self, connection: AsyncConnection, t: NewTask) -> str:
        params = {"id": t.id, "name": t.name, "queue": t.queue, "priority": t.priority,
                  "args": t.args_json, "kwargs": t.kwargs_json, "max_attempts": t.max_attempts,
                  "countdown": t.countdown, "eta": t.eta, "unique_key": t.unique_key,
                  "max_concurrency": t.max_concurrency, "trace_context": t.trace_context}
        if (await connection.execute(text(sql.INSERT_ONE_SQLA), params)).first() is not None:
            return t.id
        held = (await connection.execute(text(sql.ACTIVE_BY_UNIQUE_KEY_SQLA), {"key": t.unique_key})).first()
        if held is None:
            raise BrokerUnavailable(f"unique key {t.unique_key!r} is held by a task this transaction cannot see")
        return str(held[0])

    async def claim(self, worker_id: str, pid: int, limit: int,
                    queues: Sequence[str] | None = None) -> list[ClaimedTask]:
        qs = list(queues) if queues is not None else None
        async with self._conn() as conn:
            rows = list(await conn.fetch(sql.CLAIM, worker_id, pid, limit, qs))
            rows += await self._claim_limited(conn, worker_id, pid, limit - len(rows), qs)
        self._claimed(rows)
        return [ClaimedTask(*row[:8]) for row in rows]

    async def _claim_limited(self, conn: asyncpg.Connection, worker_id: str, pid: int, limit: int,
                             qs: list[str] | None) -> list[Any]:
        """Tasks with a concurrency limit, when the plain claim left room and some are due."""
        if limit <= 0 or not await conn.fetchval(sql.HAS_LIMITED_DUE, qs):
            return []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.LIMITED_LOCK)
            return list(await conn.fetch(sql.CLAIM_LIMITED, worker_id, pid, limit, qs))

    async def finish_and_claim(self, outcomes: Sequence[Outcome], worker_id: str, pid: int, limit: int,
                               queues: Sequence[str] | None = None) -> tuple[list[str], list[ClaimedTask]]:
        """One statement, one commit: the outcomes are written (committed before this returns,
        as with finish()) and up to ``limit`` tasks claimed."""
        if not outcomes or limit <= 0:
            return await super().finish_and_claim(outcomes, worker_id, pid, limit, queues)
        qs = list(queues) if queues is not None else None
        async with self._conn() as conn:
            rows = await conn.fetch(sql.FINISH_AND_CLAIM, *_outcome_columns(outcomes), worker_id, pid, limit, qs)
            finished = [r for r in rows if r[0] == "f"]
            claimed = [(*tuple(r)[1:9], r[10]) for r in rows if r[0] == "c"]
            self._finished(len(finished))
            if any(r[2] == "pending" or r[9] for r in finished):
                await conn.execute(sql.NOTIFY, sql.CHANNEL)
            claimed += await self._claim_limited(conn, worker_id, pid, limit - len(claimed), qs)
        self._claimed(claimed)
        return [r[1] for r in finished], [ClaimedTask(*row[:8]) for row in claimed]

    async def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        async with self._conn() as conn:
            value = await conn.fetchval(sql.NEXT_DUE, list(queues) if queues is not None else None)
        return None if value is None else float(value)

    async def clock_offset(self) -> float:
        async with self._conn() as conn:
            before = time.time()
            db_now = float(await conn.fetchval(sql.CLOCK))
            after = time.time()
        # the error is at most half the round trip: a slow one (a network hiccup) keeps the last
        if self._clock_offset is None or after - before < 0.25:
            self._clock_offset = db_now - (before + after) / 2
        return self._clock_offset

    async def enqueue_tick(self, schedule: str, tick: float, task: NewTask) -> bool:
        async with self._conn() as conn, conn.transaction():
            last = await conn.fetchval(sql.GET_TICK_FOR_UPDATE, schedule)
            if last is None:  # first sight of this schedule: its first run is its next tick
                await conn.execute(sql.INSERT_TICK, schedule, tick)
                return False
            if last >= tick:
                return False
            await conn.execute(sql.UPDATE_TICK, schedule, tick)
            await conn.execute(
                sql.INSERT_MANY, [task.id], [task.name], [task.queue], [task.priority], [task.args_json],
                [task.kwargs_json], [task.max_attempts], [task.countdown], [task.eta], [task.unique_key],
                [task.max_concurrency], [task.trace_context])
            return True

    async def purge(self, older_than: float, batch_size: int = 1000) -> int:
        total = 0
        while True:
            async with self._conn() as conn:
                status = await conn.execute(sql.PURGE, float(older_than), batch_size)
            n = int(status.split()[-1])
            total += n
            if n < batch_size:
                return total

    async def finish(self, outcomes: Sequence[Outcome]) -> list[str]:
        if not outcomes:
            return []
        async with self._conn() as conn:
            rows = await conn.fetch(sql.FINISH_MANY, *_outcome_columns(outcomes))
            self._finished(len(rows))
            # wake idle workers: a task is pending again, or a concurrency slot came free
            if any(r[1] == "pending" or r[2] for r in rows):
                await conn.execute(sql.NOTIFY, sql.CHANNEL)
        return [r[0] for r in rows]

    async def update_running(self, updates: Sequence[RunningUpdate], worker_id: str) -> None:
        if not updates:
            return
        async with self._conn() as conn:
            await conn.execute(sql.UPDATE_RUNNING, [u.task_id for u in updates],
                               [u.progress for u in updates], [u.pid for u in updates], worker_id,
                               [u.message for u in updates], [u.started_ago for u in updates])

    async def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> list[str]:
        async with self._conn() as conn:
            return [r[0] for r in await conn.fetch(sql.HEARTBEAT, worker_id, list(task_ids))]

    async def requeue_stalled(self, timeout: float, max_rescues: int) -> list[str]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql.REQUEUE_STALLED, max_rescues,
                                    worker_lost_error(timeout, max_rescues), float(timeout))
            if any(r[1] == "pending" for r in rows):
                await conn.execute(sql.NOTIFY, sql.CHANNEL)
        return [r[0] for r in rows]

    async def cancel_requested(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        async with self._conn() as conn:
            return [r[0] for r in await conn.fetch(sql.CANCEL_REQUESTED, list(task_ids))]

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(sql.SELECT_ONE, task_id)
        return None if row is None else record_from_row(dict(row))

    async def cancel(self, task_id: str) -> bool:
        async with self._conn() as conn:
            if await conn.fetchval(sql.CANCEL, task_id) is not None:
                return True
            if not await conn.fetchval(sql.EXISTS, task_id):
                raise TaskNotFound(f"no task with id {task_id!r}")
            return False


#: Tasks finished by one broker between two vacuums of litetask_queue (see PostgresBroker._finished).
VACUUM_EVERY = 10_000


def _outcome_columns(outcomes: Sequence[Outcome]) -> list[str]:
    """FINISH_MANY's nine columns, each the outcomes' values joined by UNIT_SEP (None as an
    empty element): id, new status, result, error, retry delay, attempts given back, pid,
    worker, attempt."""
    now = time.time()
    kinds = [o.kind for o in outcomes]
    back = (OutcomeKind.RETRY, OutcomeKind.RELEASE)
    cols = (
        [o.task_id for o in outcomes],
        ["pending" if k in back else k.value for k in kinds],
        [o.result_json or "" for o in outcomes],
        [o.error_json or "" for o in outcomes],
        [repr(bounded_delay(o.retry_delay, now)) for o in outcomes],
        ["1" if k is OutcomeKind.RELEASE else "0" for k in kinds],
        ["" if o.pid is None else str(o.pid) for o in outcomes],
        [o.worker_id for o in outcomes],
        [str(o.attempt) for o in outcomes],
    )
    return [sql.UNIT_SEP.join(col) for col in cols]


async def _wait_first(*aws: Coroutine[Any, Any, Any], timeout: float) -> None:
    """Wait until one of ``aws`` finishes or ``timeout`` passes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Pool:
    """A minimal pool of raw asyncpg connections for the hot paths.

    Borrowing through SQLAlchemy's async pool costs ~100 µs of CPU per statement (greenlet
    switches, an extra task, reset-on-return), more than the statements themselves; asyncpg's
    own pool sends a reset query on every release. Our statements run outside transactions, so a
    connection comes back clean unless the statement was interrupted: then it is dropped.
    """

    def __init__(self, dsn: str, size: int, transaction_pooler: bool = False) -> None:
        self._dsn = dsn
        self._pooled = transaction_pooler
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._closed:
            raise BrokerUnavailable("the PostgreSQL broker was closed")
        async with self._slots:
            while self._idle and self._idle[-1].is_closed():  # closed by the server meanwhile (a restart)
                self._idle.pop().terminate()
            conn = self._idle.pop() if self._idle else await asyncpg.connect(
                self._dsn, timeout=10, command_timeout=60,
                server_settings={"application_name": "litetask_async"},
                statement_cache_size=0 if self._pooled else 100)
            try:
                yield conn
            except BaseException as exc:
                if conn.is_closed() or _is_connection_error(exc) or not isinstance(exc, asyncpg.PostgresError):
                    # Interrupted mid-statement, or the server went away: its state is unknown.
                    # After a server restart every idle connection is dead too.
                    conn.terminate()
                    self._drop_idle()
                else:
                    self._release(conn)
                raise
            self._release(conn)

    def _release(self, conn: asyncpg.Connection) -> None:
        if self._closed or conn.is_closed():
            conn.terminate()
        else:
            self._idle.append(conn)

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.terminate()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for c in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)


def _is_connection_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, _CONNECTION_ERRORS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
