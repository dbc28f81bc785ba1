"""LiteTask: the app object. Task registry, broker per event loop, sync facade, worker entry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, ParamSpec, TypeVar, overload

import anyio
from anyio.from_thread import BlockingPortal

from . import tracing
from .brokers.base import Broker, redact_url
from .exceptions import ConfigurationError, TaskNotFound
from .records import LogRecord, NewTask, TaskRecord, TaskStatus, WorkerInfo
from .scheduling import Schedule
from .tasks import MAX_DURATION, Task, check_text, new_task

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///litetask.db"

# A worker counts as alive while its last heartbeat is this recent (seconds).
WORKER_ALIVE_WITHIN = 60.0


def broker_factory(url: str, auto_migrate: bool = True) -> Callable[[], Broker]:
    """Check ``url`` and return a function that builds a broker for it."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"not a broker URL: {redact_url(url)!r}; use 'sqlite:///path.db', 'memory://' or 'postgresql://...'")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        from .brokers.memory import MemoryBroker

        name = url.split("://", 1)[1] or "default"
        return lambda: MemoryBroker(name)
    if scheme in ("sqlite", "sqlite+aiosqlite"):
        from .brokers.sqlite import SQLiteBroker

        return lambda: SQLiteBroker(url)  # the URL is checked by LiteTask, which parses it once
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        from .brokers.postgres import PostgresBroker, sqlalchemy_url

        sqlalchemy_url(url)  # raises on a malformed URL now
        return lambda: PostgresBroker(url, auto_migrate=auto_migrate)
    if scheme.startswith("postgres"):
        raise ConfigurationError(
            f"not a PostgreSQL URL litetask_async can use: {redact_url(url)!r}; it talks to PostgreSQL through "
            "asyncpg: use 'postgresql://...' or 'postgresql+asyncpg://...'")
    raise ConfigurationError(
        f"unknown broker URL scheme {scheme!r} in {redact_url(url)!r}; "
        "use 'sqlite:///path.db', 'sqlite+aiosqlite:///path.db', 'memory://' or 'postgresql://...'")


class LiteTask:
    """The app: register tasks with :meth:`task`, enqueue them, read them back, run workers.

    ``LiteTask()`` stores tasks in the SQLite file ``./litetask.db``. Other URLs:
    ``sqlite:///path.db``, ``sqlite+aiosqlite:///path.db``, ``memory://`` (one process only),
    ``postgresql://user:pw@host/db`` (also ``postgresql+asyncpg://``).

    ``auto_migrate=False`` makes the PostgreSQL broker refuse to create or change its schema at
    run time; apply it with ``litetask migrate`` or :meth:`migrate` at deployment instead.
    ``result_ttl`` (a timedelta or seconds): workers delete finished tasks older than that in the
    background (see :meth:`purge`).

    For example::

        app = LiteTask("postgresql://user@db/app")

        @app.task(retries=3, timeout=60)
        async def build(customer: str) -> dict[str, int]:
            return {"rows": 42}

        task_id = await build.adelay("acme")        # build.delay("acme") from sync code
        rec = await app.wait(task_id, timeout=30)   # the final TaskRecord
    """

    #: What :meth:`task` makes; a subclass of :class:`Task` may add ways to enqueue
    #: (litetask_async.contrib.django adds ``delay_on_commit``).
    task_class: type[Task[Any, Any]] = Task

    def __init__(self, url: str = DEFAULT_URL, *, auto_migrate: bool = True,
                 result_ttl: timedelta | float | None = None) -> None:
        self.url = url
        self._make_broker = broker_factory(url, auto_migrate)
        # (path, busy timeout) of an SQLite URL, parsed here so a malformed one fails at once
        self._sqlite: tuple[str, int] | None = None
        self._sqlite_enqueue: Callable[[Sequence[NewTask]], list[str]] | None = None  # sync delay()'s
        if url.split("://", 1)[0].lower() in ("sqlite", "sqlite+aiosqlite"):
            from .brokers.sqlite import busy_timeout_ms, enqueue_blocking, path_from_url

            self._sqlite = (path_from_url(url), busy_timeout_ms(url))
            self._sqlite_enqueue = partial(enqueue_blocking, *self._sqlite)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        if result_ttl is not None:
            seconds = result_ttl.total_seconds() if isinstance(result_ttl, timedelta) else result_ttl
            if not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_DURATION:
                raise ConfigurationError(f"result_ttl must be positive and at most {MAX_DURATION:.0f} "
                                         f"seconds (10,000 years), got {result_ttl!r}")
            result_ttl = timedelta(seconds=seconds)
        self.result_ttl: timedelta | None = result_ttl
        self._brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Broker] = weakref.WeakKeyDictionary()
        self._opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self._closers: weakref.WeakKeyDictionary[Broker, AsyncIterator[None]] = weakref.WeakKeyDictionary()
        self._portal: BlockingPortal | None = None
        self._portal_thread: threading.Thread | None = None
        self._portal_pid = 0
        self._portal_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LiteTask({redact_url(self.url)!r})"

    # --- registry ---

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, retries: int = 0,
        retry_backoff: float = 1.0, retry_on: tuple[type[BaseException], ...] | None = None,
        timeout: float | None = None, queue: str = "default", priority: int = 0,
        max_concurrency: int | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: Callable[P, R] | None = None, /, *, name: str | None = None, retries: int = 0,
        retry_backoff: float = 1.0, retry_on: tuple[type[BaseException], ...] | None = None,
        timeout: float | None = None, queue: str = "default", priority: int = 0,
        max_concurrency: int | None = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task; use bare (``@app.task``) or with options.

        ``async def`` functions run on the worker's event loop, plain ``def`` functions in its
        process pool. ``retries`` extra attempts after an exception (only for ``retry_on`` types
        if given), waiting ``retry_backoff * 2**(attempt-1)`` seconds with jitter; ``timeout``
        seconds stops the task and records a ``TaskTimeout`` error. ``queue`` and ``priority``
        (higher runs first) are defaults that ``configure()`` can override per call;
        ``max_concurrency=N`` keeps at most N of this task running at once across all workers.

        For example::

            @app.task
            def add(a: int, b: int) -> int:
                return a + b

            @app.task(name="reports.build", retries=3, retry_on=(IOError,), timeout=60)
            async def build(customer: str, progress: TaskProgress) -> dict[str, int]:
                progress.set(50, "half way")
                return {"rows": 42}
        """

        def register(f: Callable[P, R]) -> Task[P, R]:
            t: Task[P, R] = self.task_class(self, f, name=name, retries=retries, retry_backoff=retry_backoff,
                                            retry_on=retry_on, timeout=timeout, queue=queue,
                                            priority=priority, max_concurrency=max_concurrency)
            if t.name in self.tasks and self.tasks[t.name].fn is not f:
                raise ConfigurationError(f"a different task is already registered as {t.name!r}")
            self.tasks[t.name] = t
            return t

        return register(fn) if fn is not None else register

    def periodic(
        self, *, cron: str | None = None, every: float | timedelta | None = None,
        name: str | None = None, queue: str = "default", priority: int = 0,
        retries: int = 0, timeout: float | None = None,
    ) -> Callable[[Callable[[], R]], Task[[], R]]:
        """Register a task that workers enqueue on a schedule: ``cron="*/5 * * * *"`` (UTC) or
        ``every=30`` seconds / ``every=timedelta(...)``.

        Each tick is enqueued exactly once however many workers run (a compare-and-set on the
        schedule's last tick), by any worker that has the schedule. The first run is the first
        tick after the schedule is first seen; after downtime, only the latest missed tick runs.

        For example::

            @app.periodic(cron="0 3 * * *")                  # 03:00 UTC every day
            async def nightly_cleanup() -> None: ...

            @app.periodic(every=timedelta(minutes=10), retries=2)
            def sync_prices() -> None: ...
        """
        schedule = Schedule.build(cron, every)

        def register(f: Callable[[], R]) -> Task[[], R]:
            t = self.task(name=name, queue=queue, priority=priority, retries=retries, timeout=timeout)(f)
            self.schedules[t.name] = schedule
            return t

        return register

    # --- broker per event loop ---

    async def broker(self) -> Broker:
        """The open broker for the running event loop (opened on first use)."""
        loop = asyncio.get_running_loop()
        b = self._brokers.get(loop)
        if b is not None:
            return b
        lock = self._opening.setdefault(loop, asyncio.Lock())
        async with lock:
            b = self._brokers.get(loop)
            if b is None:
                b = self._make_broker()
                await b.open()
                self._brokers[loop] = b
                await self._close_with_loop(b)
        return b

    async def _close_with_loop(self, broker: Broker) -> None:
        """Close ``broker`` when its loop ends, even if nobody calls :meth:`aclose`.

        ``asyncio.run`` finalises the loop's live async generators (``shutdown_asyncgens``)
        before closing it; a started generator whose ``finally`` closes the broker is the one
        hook a loop offers for that.
        """
        async def closer() -> AsyncIterator[None]:
            try:
                yield
            finally:
                if self._brokers.get(asyncio.get_running_loop()) is broker:
                    self._brokers.pop(asyncio.get_running_loop(), None)
                    await broker.close()

        gen = closer()
        await gen.__anext__()
        self._closers[broker] = gen

    async def _enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> list[str]:
        if not tasks:
            return []
        with tracing.publishing(tasks) as traced:
            return await self._store(traced, connection)

    async def _store(self, tasks: Sequence[NewTask], connection: Any = None) -> list[str]:
        broker = self._brokers.get(asyncio.get_running_loop()) or await self.broker()
        if connection is None:
            return await broker.enqueue(tasks)
        from .brokers.postgres import PostgresBroker

        if not isinstance(broker, PostgresBroker):
            raise ConfigurationError(
                "enqueue inside the caller's transaction (connection=...) needs the PostgreSQL broker")
        return await broker.enqueue(tasks, connection=connection)

    async def migrate(self) -> int:
        """Create or upgrade the database schema; returns the schema version.

        For PostgreSQL this is what ``litetask migrate`` runs at deployment; SQLite and memory
        create their schema when first opened.
        """
        broker = self._make_broker()
        from .brokers.postgres import PostgresBroker, migrate_database

        if isinstance(broker, PostgresBroker):
            return await migrate_database(self.url)
        await broker.open()
        await broker.close()
        from .brokers.sqlite_sql import LATEST_VERSION

        return LATEST_VERSION if self._sqlite is not None else 1

    # --- async API ---

    async def aenqueue(self, name: str, *args: Any, **kwargs: Any) -> str:
        """Enqueue a task by name, for producers that do not import the task's code.

        A name no worker knows ends the task ``failed`` with an ``UnknownTask`` error.
        """
        task = self.tasks.get(name)
        if task is not None:
            return await task.adelay(*args, **kwargs)
        return (await self._enqueue([new_task(check_text(name, "task name"), args, kwargs)]))[0]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The task's record, or None if there is no such task."""
        if not _lookup(task_id):
            return None
        return await (await self.broker()).get(task_id)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """Wait until the task is completed, failed or cancelled, and return its record.

        Raises ``TimeoutError`` after ``timeout`` seconds and :class:`TaskNotFound` for an
        unknown id.

        For example::

            rec = await app.wait(task_id, timeout=30)
            if rec.status is TaskStatus.COMPLETED:
                print(rec.result)
            else:
                print(rec.error["type"], rec.error["message"])
        """
        if not _lookup(task_id):
            raise TaskNotFound(f"no task with id {task_id!r}")
        if timeout is not None and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds or None, got nan")
        broker = await self.broker()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.005
        while True:
            rec = await broker.get(task_id)
            if rec is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            if rec.is_final:
                return rec
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"task {task_id} is still {rec.status.value} after {timeout}s")
            sleep = delay if deadline is None else min(delay, max(0.0, deadline - loop.time()))
            await asyncio.sleep(sleep)
            delay = min(delay * 1.5, 0.2)

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task. A pending task never runs; a running one is stopped by its worker
        within about a second and ends ``cancelled``. Returns False (and changes nothing) when
        the task had already finished. Raises :class:`TaskNotFound` for an unknown id."""
        if not _lookup(task_id):
            raise TaskNotFound(f"no task with id {task_id!r}")
        return await (await self.broker()).cancel(task_id)

    async def run_worker(
        self, *, concurrency: int = 8, processes: int | None = None,
        queues: Sequence[str] | None = None,
        heartbeat_interval: float = 5.0, heartbeat_timeout: float = 30.0,
        grace_period: float = 30.0, max_rescues: int = 3, poll_interval: float = 1.0,
        install_signal_handlers: bool = True,
    ) -> None:
        """Run a worker in this event loop until SIGTERM/SIGINT; see :class:`Worker`.

        ``queues``: take tasks of these queues only (default: every queue).
        """
        from .worker import Worker

        await Worker(
            self, concurrency=concurrency, processes=processes, queues=queues,
            heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
            grace_period=grace_period, max_rescues=max_rescues, poll_interval=poll_interval,
            install_signal_handlers=install_signal_handlers,
        ).run()

    async def purge(self, older_than: timedelta | float) -> int:
        """Delete finished tasks (completed, failed, cancelled) that finished more than
        ``older_than`` ago, in batches; pending and running tasks are never touched. Returns
        how many were deleted."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_DURATION:  # also NaN
            raise ValueError(f"older_than must be from 0 to {MAX_DURATION:.0f} seconds (10,000 years), "
                             f"got {older_than!r}")
        return await (await self.broker()).purge(float(seconds))

    def purge_sync(self, older_than: timedelta | float) -> int:
        """Sync twin of :meth:`purge`."""
        return self._call_sync(self.purge, older_than)

    # --- operating it ---

    async def list_tasks(self, status: TaskStatus | str | None = None, name: str | None = None,
                         queue: str | None = None, limit: int = 50,
                         before: str | None = None) -> list[TaskRecord]:
        """Tasks, newest first, optionally filtered; ``before=<id of the last task you got>``
        gives the next page (keyset pagination: no OFFSET, served by indexes).

        For example::

            page = await app.list_tasks(status="failed", limit=50)
            while page:
                for rec in page:
                    print(rec.id, rec.name, rec.error["type"])
                page = await app.list_tasks(status="failed", limit=50, before=page[-1].id)
        """
        if status is not None:
            status = TaskStatus(status).value
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be an int from 1 to 10000, got {limit!r}")
        if before is not None and not _lookup(before):
            raise TaskNotFound(f"no task with id {before!r} (the 'before' cursor)")
        for field, value in (("name", name), ("queue", queue)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"the {field} filter must be a string, got {type(value).__name__}")
            if value is not None and not _storable(value):
                return []  # no task has such a name or queue: they are refused at enqueue
        return await (await self.broker()).list_tasks(status=status, name=name, queue=queue,
                                                      limit=limit, before=before)

    async def retry(self, task_id: str) -> bool:
        """Run a failed or cancelled task again (its attempt history is kept). Returns False
        when the task is not failed or cancelled. Raises :class:`TaskNotFound`."""
        if not _lookup(task_id):
            raise TaskNotFound(f"no task with id {task_id!r}")
        return await (await self.broker()).retry(task_id)

    async def stats(self) -> dict[str, Any]:
        """``{"by_queue": {queue: {status: n}}, "totals": {status: n}, "oldest_pending_age":
        seconds or None (the oldest due task still waiting), "completed_last_minute": n,
        "failed_last_minute": n, "workers_alive": n}``."""
        broker = await self.broker()
        stats = await broker.stats()
        stats["workers_alive"] = len(await broker.workers(WORKER_ALIVE_WITHIN))
        return stats

    async def workers(self) -> list[WorkerInfo]:
        """Live workers (heartbeat within the last 60 s): id, hostname, pid, queues,
        concurrency, running count, started_at, last heartbeat."""
        return await (await self.broker()).workers(WORKER_ALIVE_WITHIN)

    async def task_logs(self, task_id: str, limit: int = 1000) -> list[LogRecord]:
        """``logging`` records emitted inside the task (async or process pool), oldest first.
        Raises :class:`TaskNotFound` for an unknown id."""
        if not _lookup(task_id):
            raise TaskNotFound(f"no task with id {task_id!r}")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        broker = await self.broker()
        logs = await broker.task_logs(task_id, limit)
        if not logs and await broker.get(task_id) is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return logs

    def list_tasks_sync(self, status: TaskStatus | str | None = None, name: str | None = None,
                        queue: str | None = None, limit: int = 50,
                        before: str | None = None) -> list[TaskRecord]:
        """Sync twin of :meth:`list_tasks`."""
        return self._call_sync(lambda: self.list_tasks(status, name, queue, limit, before))

    def retry_sync(self, task_id: str) -> bool:
        """Sync twin of :meth:`retry`."""
        return self._call_sync(self.retry, task_id)

    def stats_sync(self) -> dict[str, Any]:
        """Sync twin of :meth:`stats`."""
        return self._call_sync(self.stats)

    def workers_sync(self) -> list[WorkerInfo]:
        """Sync twin of :meth:`workers`."""
        return self._call_sync(self.workers)

    def task_logs_sync(self, task_id: str, limit: int = 1000) -> list[LogRecord]:
        """Sync twin of :meth:`task_logs`."""
        return self._call_sync(self.task_logs, task_id, limit)

    async def aclose(self) -> None:
        """Close the broker of the running event loop."""
        b = self._brokers.pop(asyncio.get_running_loop(), None)
        if b is not None:
            await b.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, _web_app: object = None) -> AsyncIterator[None]:
        """Tie this app to a web app's lifetime; the FastAPI / Starlette one-liner::

            api = FastAPI(lifespan=tasks.lifespan)

        Opens the database at start-up (a wrong URL or a database that is down fails the start,
        not the first request) and closes this event loop's connections at shutdown.
        """
        await self.broker()
        try:
            yield
        finally:
            await self.aclose()

    def dependency(self) -> LiteTask:
        """A FastAPI dependency that hands a handler this app::

            @api.post("/reports")
            async def create(tasks: Annotated[LiteTask, Depends(tasks.dependency)]) -> ...
        """
        return self

    # --- sync facade: one background event loop per app (and per process) ---

    def _get_portal(self) -> BlockingPortal:
        with self._portal_lock:
            if self._portal is None or self._portal_pid != os.getpid():
                ready: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()

                async def serve() -> None:
                    async with BlockingPortal() as portal:
                        ready.set_result(portal)
                        await portal.sleep_until_stopped()
                    await self.aclose()

                # A daemon thread: an app never closed must not keep the interpreter alive.
                self._portal_thread = threading.Thread(target=anyio.run, args=(serve,), daemon=True,
                                                       name="litetask-sync-portal")
                self._portal_thread.start()
                self._portal = ready.result()
                self._portal_pid = os.getpid()
            return self._portal

    def _enqueue_sync(self, tasks: Sequence[NewTask]) -> list[str]:
        """Enqueue from sync code. On SQLite the calling thread hands the insert straight to the
        writer thread (its group commit still batches concurrent callers); elsewhere the sync
        facade's loop runs it."""
        if not tasks:
            return []
        # The span starts here, in the caller's thread, whose context is the parent.
        with tracing.publishing(tasks) as traced:
            if self._sqlite_enqueue is not None:
                return self._sqlite_enqueue(traced)
            return self._call_sync(self._store, traced)

    def _call_sync(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self._get_portal().call(fn, *args)

    def enqueue(self, name: str, *args: Any, **kwargs: Any) -> str:
        """Sync twin of :meth:`aenqueue`."""
        task = self.tasks.get(name)
        if task is not None:
            return task.delay(*args, **kwargs)
        return self._enqueue_sync([new_task(check_text(name, "task name"), args, kwargs)])[0]

    def get_task_sync(self, task_id: str) -> TaskRecord | None:
        """Sync twin of :meth:`get_task`."""
        return self._call_sync(self.get_task, task_id)

    def wait_sync(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """Sync twin of :meth:`wait`."""
        return self._call_sync(self.wait, task_id, timeout)

    def cancel_sync(self, task_id: str) -> bool:
        """Sync twin of :meth:`cancel`."""
        return self._call_sync(self.cancel, task_id)

    def close(self) -> None:
        """Close the sync facade's connections and stop its background loop (restarted on next
        use). Returns once everything is closed."""
        with self._portal_lock:
            portal, self._portal = self._portal, None
            thread, self._portal_thread = self._portal_thread, None
        if portal is not None and self._portal_pid == os.getpid():
            portal.call(self.aclose)
            portal.call(portal.stop)
            if thread is not None:
                thread.join(10)

    def dashboard(self, *, token: str | None = None,
                  read_only: bool = False) -> Callable[[Any, Any, Any], Awaitable[None]]:
        """The web dashboard as an ASGI app (``starlette.types.ASGIApp``): overview, task list,
        task detail with live progress, workers and ``/metrics``. Serve it with uvicorn or mount
        it (``fastapi_app.mount("/tasks", app.dashboard())``). Cancel and retry need ``token``
        (default: the ``LITETASK_DASHBOARD_TOKEN`` environment variable); without one they are
        disabled, and ``read_only=True`` hides and refuses them. Needs the ``dashboard`` extra."""
        from .dashboard import create_dashboard

        if token is None:
            token = os.environ.get("LITETASK_DASHBOARD_TOKEN") or None
        return create_dashboard(self, token=token, read_only=read_only)

    def metrics_asgi(self) -> Callable[[Any, Any, Any], Awaitable[None]]:
        """Prometheus metrics read from the database at each scrape, as a standalone ASGI app
        (``starlette.types.ASGIApp``) answering GET on any path. Needs the ``dashboard`` extra."""
        from .dashboard import create_metrics_app

        return create_metrics_app(self)


def _lookup(task_id: object) -> bool:
    """Whether ``task_id`` is worth asking the broker about: a TypeError for what is not a
    string; False for a string no broker can hold (a NUL or a lone surrogate), which is no
    task's id, so every broker answers "not found" alike instead of PostgreSQL raising."""
    if not isinstance(task_id, str):
        raise TypeError(f"task ids are strings (as returned by delay()), got {type(task_id).__name__}")
    return _storable(task_id)


def _storable(text: str) -> bool:
    """False for text with a NUL or a lone surrogate: refused at enqueue, so no task holds it."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
