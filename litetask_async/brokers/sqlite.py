"""SQLite broker: the embedded default. Several processes may share one file.

Writes: every write of a process goes through one dedicated writer thread
(:class:`SQLiteWriter`) that takes all writes queued meanwhile and runs them in one
``BEGIN IMMEDIATE`` transaction (group commit), each in its own savepoint so one failing write
does not undo the others. 1,000 concurrent enqueues cost a handful of commits.

Reads: an aiosqlite connection per event loop (WAL lets readers run beside the writer).

Wake-ups across processes: after a commit that makes work due, the writer pokes every idle
worker of the file through a Unix datagram socket (:mod:`.sqlite_wake`). As a safety net an idle
worker also polls ``PRAGMA data_version`` (which changes whenever another connection commits; a
cheap read that touches no table), slowly when its socket works and every 20 ms when it has none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from ..exceptions import BrokerUnavailable, ConfigurationError, TaskNotFound
from ..records import ClaimedTask, LogRecord, NewTask, Outcome, OutcomeKind, TaskRecord, WorkerInfo
from . import sqlite_sql as sql
from .base import (
    Broker,
    RunningUpdate,
    bounded_delay,
    bucket_case,
    log_from_row,
    record_from_row,
    stats_dict,
    worker_from_row,
    worker_lost_error,
)
from .sqlite_wake import WakeListener, WakeSender

log = logging.getLogger("litetask_async.sqlite")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
#: The longest ``?busy_timeout=`` (seconds) a URL may ask for: a day.
MAX_BUSY_TIMEOUT = 86_400
MAX_BATCH = 2_000
WAL_AUTOCHECKPOINT = 1000  # SQLite's default, in pages
#: try_now commits between checkpoints by the writer thread (a lone enqueue's commit writes
#: 2-3 pages, a claim's a few more: about SQLite's WAL_AUTOCHECKPOINT pages).
CHECKPOINT_EVERY = 300


def _connect(path: str, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_ms / 1000)
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    for pragma in sql.PRAGMAS:
        # Switching a new file to WAL while another process does the same can report "locked"
        # without going through the busy handler.
        _retry_locked(conn.execute, busy_ms / 1000, pragma)
    return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _retry_locked(op: Callable[..., T], timeout: float, *args: Any) -> T:
    """Run ``op(*args)``, retrying with backoff while SQLite says the database is locked or busy."""
    delay = 0.01
    deadline = time.monotonic() + timeout
    while True:
        try:
            return op(*args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


#: A queue item: the write connection's part of a checkpoint (see SQLiteWriter._checkpoint).
_CHECKPOINT_TAIL: list[Any] = []


class _OpFuture(Protocol):
    """What the writer thread needs of a write's future: ``concurrent.futures.Future`` or,
    for writes handed over from an event loop, the lighter ``_OpResult``."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def running(self) -> bool: ...
    def done(self) -> bool: ...
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, error: BaseException) -> None: ...


_Op = tuple[Callable[..., Any], tuple[Any, ...], _OpFuture]


class SQLiteWriter:
    """One thread owning the process's write connection to one SQLite file; group commit.

    ``submit(fn, *args)`` queues ``fn(conn, *args)`` and returns a concurrent future resolved
    after the transaction that ran it has committed. Callable from any thread or event loop.
    """

    def __init__(self, path: str, busy_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.busy_ms = busy_ms
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"litetask-sqlite-writer:{path}", daemon=True)
        self.ready = concurrent.futures.Future[None]()  # resolved once the schema is in place
        self.stopped = concurrent.futures.Future[None]()  # resolved once the connection is closed
        self.commits = 0  # how many transactions were committed (for benchmarks and tests)
        self._waker = WakeSender(path)
        self._closing = threading.Lock()
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        # Held while a transaction runs on the connection: by the writer thread, or by a lone
        # caller that found the writer idle (run_now, try_now).
        self._busy = threading.Lock()
        self._unchecked = 0  # commits by try_now since the writer thread last checkpointed
        self._waits = True  # how the connection is set up (see _mode)
        self._checkpoints = True
        # Handed-over writes not yet taken up (a checkpoint request is not one): while there
        # are any, a lone write must not pass them (run_now, try_now wait their turn).
        self._queued = 0
        self._checkpointer: sqlite3.Connection | None = None  # the writer thread's, see _checkpoint
        self._thread.start()

    def run_now(self, fn: Callable[..., T], *args: Any) -> tuple[T] | None:
        """Run one write on the calling thread if the writer is idle: ``(its result,)``, or
        None if the writer is busy. Raises what the write raised (BrokerUnavailable if the
        transaction could not begin or commit), as the writer's future would.

        For a synchronous caller (``delay()`` outside an event loop) with nobody to share a
        commit with: the hand-off to the writer thread and back would cost more than the write.
        Under contention the caller gets None and queues the write (group commit). Never call it
        from an event loop: the write may wait for another process's lock (see try_now).
        """
        return self._if_idle(lambda conn: self._alone(conn, fn, args, wait=True))

    def try_now(self, fn: Callable[..., T], *args: Any) -> tuple[T] | None:
        """:meth:`run_now` for an event loop (a lone ``adelay()``, a worker's claim): it never
        waits. ``None`` unless the writer is idle and the file's write lock is free this
        instant: the transaction runs with a busy timeout of 0, so another process's write sends
        the caller to the writer thread instead of blocking its loop. Its commit does not
        checkpoint (disk syncs): every ``CHECKPOINT_EVERY`` commits the writer thread is asked to."""
        return self._if_idle(lambda conn: self._alone(conn, fn, args, wait=False))

    def _if_idle(self, run: Callable[[sqlite3.Connection], tuple[T] | None]) -> tuple[T] | None:
        conn = self._conn
        if conn is None or self._queued or not self._busy.acquire(blocking=False):
            return None
        try:
            if self._closed or self._conn is None:
                return None
            return run(conn)
        finally:
            self._busy.release()

    def _alone(self, conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...], *,
               wait: bool, lone: bool = True) -> tuple[T] | None:
        """One write in a transaction of its own, no savepoint (no neighbour to protect):
        ``(its result,)``. The lone ``delay()``'s path, without the futures a batch needs (a
        fifth of that call), and :meth:`_run_batch`'s for a batch of one (``lone=False``). With
        ``wait`` a busy file is retried up to the busy timeout; without (try_now) the
        transaction gets a busy timeout of 0, and a busy BEGIN or COMMIT returns None (nothing
        was stored). A lone write's commit does not checkpoint (the WAL's disk syncs): every
        ``CHECKPOINT_EVERY`` of them the writer thread is asked to, on a connection of its own."""
        self._mode(conn, wait=wait, checkpoints=not lone)
        execute = partial(_retry_locked, conn.execute, self.busy_ms / 1000) if wait else conn.execute
        try:
            done = self._transaction(conn, fn, args, execute)
        except BrokerUnavailable as exc:
            cause = exc.__cause__
            if not wait and isinstance(cause, sqlite3.OperationalError) and _is_busy(cause):
                return None  # BEGIN or COMMIT found the file busy: nothing was stored
            raise
        if lone:
            self._unchecked += 1
            if self._unchecked >= CHECKPOINT_EVERY:
                self._unchecked = 0
                self._queue.put([])  # an empty batch: the writer thread checkpoints
        return done

    def _mode(self, conn: sqlite3.Connection, *, wait: bool, checkpoints: bool) -> None:
        """Set the connection's busy timeout (``wait``: SQLite's, else 0: a write on an event
        loop never waits) and whether its commits checkpoint (the writer thread's batches do,
        lone writes leave it to :meth:`_checkpoint`). Changed only when the next write differs:
        these PRAGMAs cost a fifth of a lone enqueue."""
        if self._waits is not wait:
            conn.execute(f"PRAGMA busy_timeout={self.busy_ms if wait else 0}")
            self._waits = wait
        if self._checkpoints is not checkpoints:
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT if checkpoints else 0}")
            self._checkpoints = checkpoints

    def _transaction(self, conn: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...],
                     execute: Callable[..., Any]) -> tuple[T]:
        """BEGIN IMMEDIATE, ``fn``, COMMIT through ``execute``. What ``fn`` raises is raised
        as it is; a failed BEGIN or COMMIT is BrokerUnavailable (caused by SQLite's error).
        A write that is one statement (``_single_statement``) runs without BEGIN and COMMIT:
        SQLite makes it its own transaction (it takes the write lock as BEGIN IMMEDIATE would,
        and commits when it ends); what it refuses itself (an id taken) is raised as it is, a
        busy or failing file is BrokerUnavailable."""
        single = _single_statement(fn, args)
        if single is not None:
            try:
                execute(single[0], single[1])
            except sqlite3.OperationalError as exc:
                raise self._failed(exc) from exc
            value = single[2]
        else:
            try:
                execute("BEGIN IMMEDIATE")
            except Exception as exc:
                raise self._failed(exc) from exc
            try:
                value = fn(conn, *args)
            except Exception:
                self._rollback(conn)
                raise
            try:
                execute("COMMIT")
            except Exception as exc:
                self._rollback(conn)
                raise self._failed(exc) from exc
        self.commits += 1
        if _makes_work(fn, args):
            self._waker.poke()
        return (value,)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _failed(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"SQLite write to {self.path} failed: {exc}")

    @property
    def alive(self) -> bool:
        """False once the writer has stopped (a new one must be made for the file)."""
        return self._thread.is_alive()

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Queue one write; the future resolves once its transaction committed."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.submit_ops([(fn, args, fut)])
        return fut

    def submit_ops(self, ops: list[_Op]) -> None:
        """Queue several writes that will share one transaction."""
        with self._closing:
            if not self._closed and self._thread.is_alive():
                self._queue.put(ops)
                self._queued += 1
                return
        err = BrokerUnavailable(f"the SQLite writer for {self.path} has stopped")
        for _fn, _args, fut in ops:
            if not fut.done():
                fut.set_exception(err)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def stop(self, wait: bool = True) -> None:
        """Finish the queued writes, then end the thread."""
        self._queue.put(None)
        if wait:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self.stopped.set_result(None)

    def _serve(self) -> None:
        try:
            conn = _connect(self.path, self.busy_ms)
            _retry_locked(_migrate, self.busy_ms / 1000, conn)
        except BaseException as exc:
            self.ready.set_exception(
                ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}"))
            return
        self._conn = conn
        self.ready.set_result(None)
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch: list[_Op] = []
            items, tail, checkpoint = 0, False, False
            while True:
                if item is _CHECKPOINT_TAIL:
                    tail, items = True, items + 1
                elif not item:  # a lone write's checkpoint request
                    checkpoint = True
                else:
                    batch.extend(item)
                    items += 1
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
            if items:
                with self._busy:
                    with self._closing:  # only now: until the batch holds _busy, no write may pass it
                        self._queued -= items
                    if tail:  # see _checkpoint
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if batch:
                        self._mode(conn, wait=True, checkpoints=True)
                        self._run_batch(conn, batch)
            if checkpoint:
                self._checkpoint()
        # Writes queued after the stop request (a racing submit) are still carried out.
        with self._closing:
            self._closed = True
        late: list[_Op] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                late.extend(item)
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._busy:
            self._mode(conn, wait=True, checkpoints=True)
            if late:
                self._run_batch(conn, late)
            self._conn = None
            conn.close()
        self._waker.close()

    def _checkpoint(self) -> None:
        """Copy the WAL's frames into the database (lone writes' commits leave that to us).
        The bulk of it runs on a connection of its own, so writes on the loop go on meanwhile
        instead of waiting for its disk syncs. Only a WAL copied to its end is started again
        from the beginning by the next write, and with writes going on this pass never gets
        there (the WAL file grew by every commit: 34 MB for 3,000 enqueues); so the write
        connection then copies the few frames written meanwhile, queued like a write
        (``_CHECKPOINT_TAIL``: lone writes wait their turn behind it, the writer thread is not
        kept from the connection by a loop writing back to back). PASSIVE: waits for nobody."""
        with contextlib.suppress(sqlite3.Error):
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        with self._closing:
            if not self._closed:
                self._queued += 1
                self._queue.put(_CHECKPOINT_TAIL)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        if len(batch) == 1:
            fn, args, fut = batch[0]
            if fut.set_running_or_notify_cancel():
                try:
                    done = self._alone(conn, fn, args, wait=True, lone=False)
                    assert done is not None  # only a write that does not wait gives up
                    fut.set_result(done[0])
                except Exception as exc:
                    fut.set_exception(exc)
            return
        results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            _retry_locked(conn.execute, self.busy_ms / 1000, "BEGIN IMMEDIATE")
            live = [op for op in batch if op[2].set_running_or_notify_cancel()]
            i = 0
            while i < len(live):
                end = i  # a run of plain inserts, in batch order, goes in as one statement
                while end < len(live) and _plain_insert(live[end]):
                    end += 1
                if end - i > 1 and _insert_together(conn, live[i:end], results):
                    i = end
                    continue
                for fn, args, fut in live[i:max(end, i + 1)]:
                    conn.execute("SAVEPOINT op")
                    try:
                        results.append((fut, fn(conn, *args), None))
                        conn.execute("RELEASE op")
                    except Exception as exc:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append((fut, None, exc))
                i = max(end, i + 1)
            if conn.in_transaction:
                _retry_locked(conn.execute, self.busy_ms / 1000, "COMMIT")
                self.commits += 1
        except Exception as exc:
            self._rollback(conn)
            err = self._failed(exc)
            err.__cause__ = exc
            for _fn, _args, fut in batch:
                if not fut.done() and (fut.running() or fut.set_running_or_notify_cancel()):
                    fut.set_exception(err)
            return
        for fut, value, error in results:
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)
        if any(_makes_work(fn, args) for fn, args, _fut in batch):
            self._waker.poke()


class _Shared:
    """What all brokers of one process share for one file: the writer and one aiosqlite reader
    (aiosqlite connections work from any event loop). Reference-counted by open brokers."""

    def __init__(self, path: str, busy_ms: int) -> None:
        self.path = path
        self.busy_ms = busy_ms
        self.writer = SQLiteWriter(path, busy_ms)
        self.reader: concurrent.futures.Future[aiosqlite.Connection] | None = None
        self.users = 0


_shared: dict[tuple[int, str], _Shared] = {}
_shared_lock = threading.Lock()


def writer_for(path: str) -> SQLiteWriter:
    """The process's one writer for ``path`` (created on first use)."""
    return _acquire(path, BUSY_TIMEOUT_MS, count=False).writer


def _acquire(path: str, busy_ms: int, count: bool = True) -> _Shared:
    key = (os.getpid(), path)
    with _shared_lock:
        sh = _shared.get(key)
        if sh is None or not sh.writer.alive:
            sh = _shared[key] = _Shared(path, busy_ms)
        sh.users += count
        return sh


async def _release(sh: _Shared) -> None:
    """Drop one user; the last one closes the reader and stops the writer (and waits for both,
    so that SQLite has removed its -wal and -shm files when close() returns)."""
    with _shared_lock:
        sh.users -= 1
        if sh.users > 0:
            return
        _shared.pop((os.getpid(), sh.path), None)
    if sh.reader is not None and sh.reader.done() and sh.reader.exception() is None:
        await sh.reader.result().close()
    sh.writer.stop(wait=False)
    await asyncio.wrap_future(sh.writer.stopped)


async def _open_reader(path: str, busy_ms: int) -> aiosqlite.Connection:
    reader = aiosqlite.connect(path, timeout=busy_ms / 1000, isolation_level=None)
    # A reader left unclosed at exit must not keep the interpreter alive.
    reader._thread.daemon = True
    conn = await reader
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


def busy_timeout_ms(url: str) -> int:
    """``?busy_timeout=SECONDS`` in the URL: how long a write waits for another process's lock
    before it fails with BrokerUnavailable (default 30 s)."""
    query = urllib.parse.parse_qs(url.partition("?")[2])
    if not query:
        return BUSY_TIMEOUT_MS
    unknown = set(query) - {"busy_timeout"}
    if unknown:
        raise ConfigurationError(f"unknown SQLite URL option(s) {sorted(unknown)} in {url!r}; known: busy_timeout")
    try:
        seconds = float(query["busy_timeout"][-1])
    except ValueError:
        raise ConfigurationError(f"busy_timeout must be a number of seconds in {url!r}") from None
    if not 0 < seconds <= MAX_BUSY_TIMEOUT:  # also refuses NaN
        raise ConfigurationError(f"busy_timeout must be positive and at most {MAX_BUSY_TIMEOUT} "
                                 f"seconds (a day) in {url!r}")
    return max(1, round(seconds * 1000))


def enqueue_blocking(path: str, busy_ms: int, tasks: Sequence[NewTask]) -> list[str]:
    """Insert from any thread without an event loop: through the process's writer thread."""
    sh = _shared.get((os.getpid(), path))
    if sh is not None:  # the common case first: a writer that is up and idle takes it at once
        done = sh.writer.run_now(_op_insert, tasks, time.time())
        if done is not None:
            return done[0]
    if sh is None or not sh.writer.ready.done() or not sh.writer.alive:
        parent = Path(path).parent
        if not parent.is_dir():
            raise ConfigurationError(f"cannot open SQLite database {path!r}: directory {str(parent)!r} does not exist")
        sh = _acquire(path, busy_ms, count=False)
    writer = sh.writer
    writer.ready.result()
    now = time.time()
    done = writer.run_now(_op_insert, tasks, now)
    return done[0] if done is not None else writer.submit(_op_insert, tasks, now).result()


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db``, ``sqlite:////abs.db``, ``sqlite+aiosqlite:///...`` to a file path.

    ``sqlite://name.db`` (no third slash, a bare file name with an extension) is the relative
    path ``name.db`` too; any other host part is refused with the spelling that was meant.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("sqlite", "sqlite+aiosqlite"):
        raise ConfigurationError(f"not an SQLite URL: {url!r}")
    rest = rest.split("?", 1)[0]
    if rest in ("", "/"):
        return str(Path("litetask.db").resolve())
    bare = not rest.startswith("/")  # sqlite://name.db
    path = rest if bare else rest[1:]
    if path in (":memory:", "") or path.startswith("file::memory:"):
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared by workers; use 'memory://' instead")
    if bare and (any(c in rest for c in "/\\:@") or not Path(rest).suffix):
        raise ConfigurationError(
            f"SQLite URL {url!r} has a host part, but SQLite has no hosts: write "
            f"'{scheme}:///{rest}' for the relative path {rest!r} or '{scheme}:////{rest}' for the "
            f"absolute path '/{rest}' (a bare file name also works: '{scheme}://tasks.db' is ./tasks.db)")
    return str(Path(path).expanduser().resolve())


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations in one immediate transaction (other processes wait for it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(sql.CREATE_META)
        row = conn.execute(sql.GET_SCHEMA_VERSION).fetchone()
        current = int(row[0]) if row else 0
        if current > sql.LATEST_VERSION:
            raise ConfigurationError(
                f"the database has schema version {current}, newer than this litetask_async "
                f"knows ({sql.LATEST_VERSION}); upgrade litetask_async")
        for version in range(current + 1, sql.LATEST_VERSION + 1):
            for stmt in sql.MIGRATIONS[version]:
                conn.execute(stmt)
            conn.execute(sql.SET_VERSION, (str(version),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --- operations run in the writer thread (each inside the batch transaction) ---

def _insert_rows(tasks: Sequence[NewTask], now: float) -> list[tuple[Any, ...]]:
    return [(t.id, t.name, t.queue, t.priority, t.args_json, t.kwargs_json, t.max_attempts, now,
             t.eta if t.eta is not None else now + (t.countdown or 0.0), t.unique_key, t.max_concurrency,
             t.trace_context)
            for t in tasks]


def _plain_insert(op: _Op) -> bool:
    """An insert whose tasks have no unique key: it stores every task, and returns their ids."""
    return op[0] is _op_insert and not any(t.unique_key for t in op[1][0])


def _insert_together(conn: sqlite3.Connection, ops: list[_Op], results: list[Any]) -> bool:
    """Many enqueues of one group commit (1,000 ``adelay()`` under ``gather``) as one
    ``executemany`` in one savepoint, instead of a savepoint and a statement each. If it fails
    (an id already taken, say), it is undone and False returned: the caller then runs each
    insert in its own savepoint, so that only the failing one fails."""
    rows = [row for _fn, (tasks, now), _fut in ops for row in _insert_rows(tasks, now)]
    conn.execute("SAVEPOINT ops")
    try:
        conn.executemany(sql.INSERT_PLAIN, rows)
    except Exception:
        conn.execute("ROLLBACK TO ops")
        conn.execute("RELEASE ops")
        return False
    conn.execute("RELEASE ops")
    results.extend((fut, [t.id for t in tasks], None) for _fn, (tasks, _now), fut in ops)
    return True


def _op_insert(conn: sqlite3.Connection, tasks: Sequence[NewTask], now: float) -> list[str]:
    rows = _insert_rows(tasks, now)
    if not any(t.unique_key for t in tasks):
        conn.executemany(sql.INSERT_PLAIN, rows)
        return [t.id for t in tasks]
    ids = []
    for t, row in zip(tasks, rows, strict=True):
        if conn.execute(sql.INSERT, row).rowcount or t.unique_key is None:
            ids.append(t.id)
        else:  # the key is held by an active task: that task stands for this one
            ids.append(conn.execute(sql.ACTIVE_BY_UNIQUE_KEY, (t.unique_key,)).fetchone()[0])
    return ids


def _single_statement(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...], Any] | None:
    """A write that is one statement, as ``(sql, parameters, its result)``: one enqueued task
    without a unique key. Anything else is None."""
    if fn is _op_insert and len(args[0]) == 1 and args[0][0].unique_key is None:
        return sql.INSERT_PLAIN, _insert_rows(args[0], args[1])[0], [args[0][0].id]
    return None


def _queue_filter(queues: Sequence[str] | None, column: str = "queue") -> tuple[str, tuple[str, ...]]:
    if queues is None:
        return "", ()
    return f"AND {column} IN ({','.join('?' * len(queues))})", tuple(queues)


def _op_claim(conn: sqlite3.Connection, worker_id: str, pid: int, limit: int,
              queues: Sequence[str] | None) -> list[ClaimedTask]:
    now = time.time()
    where, qparams = _queue_filter(queues)
    rows = conn.execute(sql.CLAIM.format(queues=where),
                        (worker_id, pid, now, now, now, *qparams, limit)).fetchall()
    if len(rows) < limit:
        where, qparams = _queue_filter(queues, "t.queue")
        rows += conn.execute(sql.CLAIM_LIMITED.format(queues=where),
                             (now, *qparams, worker_id, pid, now, now, limit - len(rows))).fetchall()
    return [ClaimedTask(*row) for row in rows]


def _op_enqueue_tick(conn: sqlite3.Connection, schedule: str, tick: float, task: NewTask) -> bool:
    row = conn.execute(sql.GET_TICK, (schedule,)).fetchone()
    if row is None:  # first sight of this schedule: its first run is its next tick
        conn.execute(sql.INSERT_TICK, (schedule, tick))
        return False
    if row[0] >= tick:
        return False
    conn.execute(sql.UPDATE_TICK, (tick, schedule))
    _op_insert(conn, [task], time.time())
    return True


def _op_purge(conn: sqlite3.Connection, cutoff: float, batch_size: int) -> int:
    ids = [(r[0],) for r in conn.execute(sql.PURGE_PICK, (cutoff, batch_size)).fetchall()]
    conn.executemany(sql.PURGE_LOGS, ids)
    conn.executemany(sql.PURGE_TASK, ids)
    return len(ids)


def _op_retry(conn: sqlite3.Connection, task_id: str) -> bool:
    if conn.execute(sql.RETRY, (time.time(), task_id)).rowcount:
        return True
    if conn.execute(sql.EXISTS, (task_id,)).fetchone() is None:
        raise TaskNotFound(f"no task with id {task_id!r}")
    return False


def _op_register_worker(conn: sqlite3.Connection, w: WorkerInfo) -> None:
    now = time.time()
    conn.execute(sql.PRUNE_WORKERS, (now - 86400,))
    conn.execute(sql.UPSERT_WORKER, (w.id, w.hostname, w.pid, json.dumps(w.queues), w.concurrency,
                                     w.started_at.timestamp(), now))


def _op_worker_heartbeat(conn: sqlite3.Connection, worker_id: str, running: int) -> None:
    conn.execute(sql.WORKER_HEARTBEAT, (running, time.time(), worker_id))


def _op_unregister_worker(conn: sqlite3.Connection, worker_id: str) -> None:
    conn.execute(sql.DELETE_WORKER, (worker_id,))


def _op_add_logs(conn: sqlite3.Connection, records: Sequence[LogRecord]) -> None:
    conn.executemany(sql.INSERT_LOG, [(r.task_id, r.attempt, r.at.timestamp(), r.level, r.message)
                                      for r in records])


def _finish_params(o: Outcome, now: float) -> tuple[Any, ...]:
    pending = o.kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE)
    status = "pending" if pending else o.kind.value
    return (
        status, o.result_json, o.error_json, now,
        now + bounded_delay(o.retry_delay, now) if pending else None,
        1 if o.kind is OutcomeKind.RELEASE else 0,
        100 if o.kind is OutcomeKind.COMPLETED else None,
        o.pid, o.task_id, o.worker_id, o.attempt,
    )


def _op_finish(conn: sqlite3.Connection, outcomes: Sequence[Outcome]) -> list[str]:
    now = time.time()
    applied = []
    for o in outcomes:
        if conn.execute(sql.FINISH, _finish_params(o, now)).rowcount:
            applied.append(o.task_id)
    return applied


def _op_finish_and_claim(conn: sqlite3.Connection, outcomes: Sequence[Outcome], worker_id: str, pid: int,
                         limit: int, queues: Sequence[str] | None) -> tuple[list[str], list[ClaimedTask]]:
    return _op_finish(conn, outcomes), _op_claim(conn, worker_id, pid, limit, queues) if limit > 0 else []


def _makes_work(fn: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    """Whether a committed write may have made a task due that an idle worker should claim."""
    if fn is _op_finish or fn is _op_finish_and_claim:
        return any(o.kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE) for o in args[0])
    return fn in (_op_insert, _op_requeue_stalled, _op_retry, _op_enqueue_tick)


def _op_update_running(conn: sqlite3.Connection, updates: Sequence[RunningUpdate], worker_id: str) -> None:
    now = time.time()
    conn.executemany(sql.UPDATE_PROGRESS, [
        (u.progress, u.pid, u.message, None if u.started_ago is None else now - u.started_ago,
         u.task_id, worker_id) for u in updates])


def _op_heartbeat(conn: sqlite3.Connection, worker_id: str, task_ids: Sequence[str]) -> list[str]:
    now = time.time()
    return [t for t in task_ids if conn.execute(sql.HEARTBEAT, (now, t, worker_id)).fetchone() is not None]


def _op_requeue_stalled(conn: sqlite3.Connection, timeout: float, max_rescues: int) -> list[str]:
    now = time.time()
    rows = conn.execute(sql.REQUEUE_STALLED,
                        (now, max_rescues, worker_lost_error(timeout, max_rescues), now - timeout))
    return [r[0] for r in rows.fetchall()]


def _op_cancel(conn: sqlite3.Connection, task_id: str) -> bool:
    if conn.execute(sql.CANCEL_PENDING, (time.time(), task_id)).rowcount:
        return True
    if conn.execute(sql.CANCEL_RUNNING, (task_id,)).rowcount:
        return True
    if conn.execute(sql.EXISTS, (task_id,)).fetchone() is None:
        raise TaskNotFound(f"no task with id {task_id!r}")
    return False


class _HandOver:
    """The writes one event loop handed over together (see ``SQLiteBroker._write``): once the
    last of them is settled (by the writer thread, or cancelled by its caller), one callback
    on the loop wakes all their callers."""

    __slots__ = ("left", "lock", "loop", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lock = threading.Lock()
        self.loop = loop
        self.results: list[_OpResult] = []
        self.left = 0

    def settled(self) -> None:  # under self.lock
        self.left -= 1
        if self.left == 0:
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
                self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self) -> None:
        for r in self.results:
            if r.waiter.done():  # its caller was cancelled
                continue
            if r.error is not None:
                r.waiter.set_exception(r.error)
            elif r.state == _FINISHED:
                r.waiter.set_result(r.value)


_PENDING, _RUNNING, _FINISHED, _CANCELLED = range(4)


class _OpResult:
    """One coalesced write's outcome: the part of ``concurrent.futures.Future`` the writer
    thread uses (a thousand ``adelay()`` under ``gather`` made a thousand of those, each with a
    Condition and an RLock: a tenth of such a call, and garbage that set off collections)."""

    __slots__ = ("error", "group", "state", "value", "waiter")

    def __init__(self, group: _HandOver, waiter: asyncio.Future[Any]) -> None:
        self.group = group
        self.waiter = waiter
        self.state = _PENDING
        self.value: Any = None
        self.error: BaseException | None = None
        group.results.append(self)
        group.left += 1

    def set_running_or_notify_cancel(self) -> bool:
        with self.group.lock:
            if self.state == _CANCELLED:
                return False
            self.state = _RUNNING
            return True

    def running(self) -> bool:
        return self.state == _RUNNING

    def done(self) -> bool:
        return self.state >= _FINISHED

    def set_result(self, value: Any) -> None:
        with self.group.lock:
            self.value, self.state = value, _FINISHED
            self.group.settled()

    def set_exception(self, error: BaseException) -> None:
        with self.group.lock:
            self.error, self.state = error, _FINISHED
            self.group.settled()

    def cancel(self) -> None:
        """From the caller's loop, once it stopped waiting: skipped unless already running."""
        with self.group.lock:
            if self.state == _PENDING:
                self.state = _CANCELLED
                self.group.settled()


class SQLiteBroker(Broker):
    """Broker over one SQLite file; see the module docstring for the design."""

    poll_interval = 0.02
    #: How often an idle worker with a wake-up socket still checks ``data_version`` (a safety
    #: net for writers that do not poke, such as another program writing the file).
    slow_poll_interval = 0.5

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url)
        self.busy_ms = busy_timeout_ms(url)
        self._shared: _Shared | None = None
        self._writer: SQLiteWriter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._data_version: int | None = None
        self._coalesced: list[_Op] = []
        self._hand_over_group: _HandOver | None = None
        self._inline_task: asyncio.Task[Any] | None = None
        self._listener: WakeListener | None = None
        self._woken: asyncio.Event | None = None

    @property
    def writer(self) -> SQLiteWriter:
        if self._writer is None:
            raise RuntimeError("broker is not open")
        return self._writer

    async def open(self) -> None:
        if self._shared is not None:
            return
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise ConfigurationError(
                f"cannot open SQLite database {self.path!r}: directory {str(parent)!r} does not exist")
        sh = _acquire(self.path, self.busy_ms)
        try:
            await asyncio.wrap_future(sh.writer.ready)
            with _shared_lock:
                first = sh.reader is None
                if first:
                    sh.reader = concurrent.futures.Future()
            assert sh.reader is not None
            if first:
                try:
                    sh.reader.set_result(await _open_reader(self.path, sh.busy_ms))
                except BaseException as exc:
                    sh.reader.set_exception(exc)
            self._reader = await asyncio.wrap_future(sh.reader)
        except BaseException:
            await _release(sh)
            raise
        self._shared = sh
        self._writer = sh.writer

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        sh, self._shared = self._shared, None
        self._writer = self._reader = None
        if sh is not None:
            await _release(sh)

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of a read on this process's reader connection, executed and fetched in one
        call on its thread. So no statement stays open between two calls (its read snapshot would
        hide newer commits from the reads queued behind it: a task just enqueued 'not found'),
        also when the caller is cancelled halfway."""
        return list(await self.reader.execute_fetchall(query, params))

    async def _fetch_one(self, query: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetch(query, params)
        return rows[0] if rows else None

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise RuntimeError("broker is not open")
        return self._reader

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a write in the writer thread. Writes issued in the same turn of this event loop
        (say, 1,000 ``adelay()`` under ``gather``) are handed over together, share a commit, and
        come back with one wake-up of the loop for all of them."""
        loop = asyncio.get_running_loop()
        group = self._hand_over_group
        if not self._coalesced or group is None:
            group = self._hand_over_group = _HandOver(loop)
            loop.call_soon(self._hand_over)
        result = _OpResult(group, loop.create_future())
        self._coalesced.append((fn, args, result))
        try:
            return await result.waiter  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            result.cancel()  # skipped by the writer unless it already runs
            raise

    def _hand_over(self) -> None:
        ops, self._coalesced = self._coalesced, []
        if self._writer is None:
            err = BrokerUnavailable("the SQLite broker was closed")
            for _fn, _args, result in ops:
                if result.set_running_or_notify_cancel():
                    result.set_exception(err)
            return
        self._writer.submit_ops(ops)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[str]:
        return await self._write_soon(_op_insert, tasks, time.time())

    async def _write_soon(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`_write`, or at once on the loop when that is cheaper and never waits
        (``SQLiteWriter.try_now``): a lone enqueue, a worker's claim."""
        if self._writer is not None and self._may_write_inline():
            done = self._writer.try_now(fn, *args)
            if done is not None:
                return done[0]
        return await self._write(fn, *args)

    def _may_write_inline(self) -> bool:
        """Whether a write may go on the loop itself (``try_now``, about a third of the
        hand-off to the writer thread and back): yes, unless another task of this loop wrote in
        this turn of the loop. So a coroutine's ``adelay()`` one after another, or a worker's
        claims, are written at once, and 1,000 ``adelay()`` under ``gather`` still share a
        commit (the first is written at once, the rest are handed over together)."""
        if self._coalesced:
            return False
        task = asyncio.current_task()
        if self._inline_task is None:
            self._inline_task = task
            asyncio.get_running_loop().call_soon(self._end_turn)
            return True
        return self._inline_task is task

    def _end_turn(self) -> None:
        self._inline_task = None

    async def claim(self, worker_id: str, pid: int, limit: int,
                    queues: Sequence[str] | None = None) -> list[ClaimedTask]:
        return await self._write_soon(_op_claim, worker_id, pid, limit, queues)

    #: The worker hands its finished tasks' outcomes to its next claim: one transaction, written
    #: on the loop when the writer thread is idle (no hand-over there and back per round).
    combines_finish_and_claim = True

    async def finish_and_claim(self, outcomes: Sequence[Outcome], worker_id: str, pid: int, limit: int,
                               queues: Sequence[str] | None = None) -> tuple[list[str], list[ClaimedTask]]:
        return await self._write_soon(_op_finish_and_claim, outcomes, worker_id, pid, limit, queues)

    async def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        earliest = await self._earliest_pending(queues)
        return None if earliest is None else earliest - time.time()

    async def _earliest_pending(self, queues: Sequence[str] | None = None) -> float | None:
        where, qparams = _queue_filter(queues)
        row = await self._fetch_one(sql.EARLIEST_PENDING.format(queues=where), qparams)
        return None if row is None else row[0]

    async def enqueue_tick(self, schedule: str, tick: float, task: NewTask) -> bool:
        return await self._write(_op_enqueue_tick, schedule, tick, task)

    async def purge(self, older_than: float, batch_size: int = 1000) -> int:
        total = 0
        while True:
            # one short write transaction per batch, so other writers are not held up
            n = await self._write(_op_purge, time.time() - older_than, batch_size)
            total += n
            if n < batch_size:
                return total

    async def finish(self, outcomes: Sequence[Outcome]) -> list[str]:
        return await self._write(_op_finish, outcomes)

    async def update_running(self, updates: Sequence[RunningUpdate], worker_id: str) -> None:
        await self._write(_op_update_running, updates, worker_id)

    async def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> list[str]:
        return await self._write(_op_heartbeat, worker_id, task_ids)

    async def requeue_stalled(self, timeout: float, max_rescues: int) -> list[str]:
        return await self._write(_op_requeue_stalled, timeout, max_rescues)

    async def cancel_requested(self, task_ids: Sequence[str]) -> list[str]:
        if not task_ids:
            return []
        query = sql.CANCEL_REQUESTED.format(marks=",".join("?" * len(task_ids)))
        return [r[0] for r in await self._fetch(query, tuple(task_ids))]

    async def get(self, task_id: str) -> TaskRecord | None:
        row = await self._fetch_one(sql.SELECT_ONE, (task_id,))
        return None if row is None else record_from_row(dict(row))

    async def cancel(self, task_id: str) -> bool:
        return await self._write(_op_cancel, task_id)

    async def list_tasks(self, *, status: str | None = None, name: str | None = None,
                         queue: str | None = None, limit: int = 50,
                         before: str | None = None) -> list[TaskRecord]:
        where, params = [], []
        if before is not None:
            if await self._fetch_one(sql.EXISTS, (before,)) is None:
                raise TaskNotFound(f"no task with id {before!r} (the 'before' cursor)")
            where.append("AND id < ?")
            params.append(before)
        for column, value in (("name", name), ("queue", queue)):
            if value is not None:
                where.append(f"AND {column} = ?")
                params.append(value)
        if name is None and queue is None:
            if status is not None:
                where.append("AND status = ?")
                params.append(status)
            query = sql.LIST.format(where=" ".join(where))
            return [record_from_row(dict(r)) for r in await self._fetch(query, (*params, limit))]
        # Finished tasks are found by name or queue through their own indexes; pending and
        # running ones through theirs (see LIST_UNION).
        states = ["final", "pending", "running"]
        if status in ("pending", "running"):
            states = [status]
        elif status is not None:
            states = ["one final"]
            params.insert(0, status)
        part_where = " ".join(where)
        parts = " UNION ALL ".join(sql.LIST_PARTS[state].format(where=part_where) for state in states)
        part_params = [*params, limit] * len(states)
        rows = await self._fetch(sql.LIST_UNION.format(parts=parts), (*part_params, limit))
        return [record_from_row(dict(r)) for r in rows]

    async def retry(self, task_id: str) -> bool:
        return await self._write(_op_retry, task_id)

    async def stats(self) -> dict[str, Any]:
        now = time.time()
        counts = [tuple(r) for r in await self._fetch(sql.STATS_COUNTS)]
        oldest = await self._earliest_pending()
        if oldest is not None and oldest > now:
            oldest = None
        recent = {r[0]: r[1] for r in await self._fetch(sql.FINISHED_SINCE, (now - 60,))}
        return stats_dict(counts, None if oldest is None else now - oldest, recent)

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._write(_op_register_worker, info)

    async def worker_heartbeat(self, worker_id: str, running: int) -> None:
        await self._write(_op_worker_heartbeat, worker_id, running)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._write(_op_unregister_worker, worker_id)

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        return [worker_from_row(dict(r)) for r in await self._fetch(sql.LIVE_WORKERS, (time.time() - alive_within,))]

    async def add_logs(self, records: Sequence[LogRecord]) -> None:
        if records:
            await self._write(_op_add_logs, records)

    async def task_logs(self, task_id: str, limit: int = 1000) -> list[LogRecord]:
        return [log_from_row(dict(r)) for r in await self._fetch(sql.TASK_LOGS, (task_id, limit))]

    async def name_counts(self) -> list[tuple[str, str, int, int]]:
        return [(r[0], r[1], r[2], r[3] or 0) for r in await self._fetch(sql.NAME_COUNTS)]

    async def durations(self) -> list[tuple[str, int, int, float]]:
        query = sql.DURATIONS.format(bucket=bucket_case("(finished_at - started_at)"))
        return [(r[0], r[1], r[2], r[3] or 0.0) for r in await self._fetch(query)]

    async def throughput(self, window: float, bucket: float) -> list[tuple[float, int, int]]:
        rows = await self._fetch(sql.THROUGHPUT, (bucket, time.time() - window))
        return [(float(r[0]), r[1] or 0, r[2] or 0) for r in rows]

    async def wait_for_work(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._woken is None:  # the first wait: this process is a worker, so listen
            self._woken = asyncio.Event()
            listener = WakeListener(self.path)
            if listener.open(asyncio.get_running_loop(), self._woken.set):
                self._listener = listener
        poll = self.poll_interval if self._listener is None else self.slow_poll_interval
        while True:
            if self._woken.is_set():
                self._woken.clear()
                return
            row = await self._fetch_one(sql.DATA_VERSION)
            version = row[0] if row else None
            if version != self._data_version:
                first = self._data_version is None
                self._data_version = version
                if not first:
                    earliest = await self._earliest_pending()
                    if earliest is not None and earliest <= time.time():
                        return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), min(poll, left))
