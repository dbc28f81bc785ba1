"""The three PostgreSQL queues behind one small interface, for ``bench_postgres.py``.

Each adapter has a *producer* side (used in the benchmark's own process: enqueue one, enqueue a
batch, count unfinished jobs) and a *worker* side (used in ``_pg_worker.py``, one subprocess per
worker: open, run until stopped, stop).

The task is the same no-op coroutine for all three. Given a ``key`` (latency phase only) it
writes ``S <key> <time.time()>`` to file descriptor 1 the moment its body starts, so the
benchmark process can compute enqueue-to-start latency; without a key it does nothing.

Settings per library (what "their recommended fast path" means here):

* litetask_async: ``LiteTask(url)``, ``adelay`` / ``adelay_many``; worker
  ``Worker(app, concurrency=C)`` (the same as ``app.run_worker(concurrency=C)``), defaults
  otherwise.
* pgqueuer: ``Queries(AsyncpgDriver(asyncpg connection))`` as in pgqueuer's own
  ``tools/benchmark.py``; ``queries.enqueue(name, payload)`` one by one and
  ``queries.enqueue([names], [payloads], [priorities])`` for a batch; worker
  ``QueueManager`` with one entrypoint per task, ``await qm.run()`` with its defaults as its
  documentation shows it (``batch_size=10``, no ``max_concurrent_tasks``); schema from
  ``queries.install()`` (default durability: logged tables, like the other two). The
  ``pgqueuer-capped`` variant (a second, labelled column) caps one worker at the benchmark's
  concurrency: ``qm.run(batch_size=C // 2, max_concurrent_tasks=C)`` (pgqueuer requires
  max_concurrent_tasks >= 2 x batch_size).
* procrastinate: ``App(connector=PsycopgConnector(conninfo=url, min_size, max_size))``,
  ``task.defer_async()`` / ``task.batch_defer_async(*kwargs)``; worker
  ``app.run_worker_async(concurrency=C, install_signal_handlers=False)`` (listen_notify on,
  the default); schema from ``app.schema_manager.apply_schema_async()``. The pool is sized
  ``concurrency + 2`` (default is 4), so a job's status write never waits for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import asyncpg

LIBS = ("litetask", "pgqueuer", "pgqueuer-capped", "procrastinate")
TASK_NAME = "bench_noop"
#: task kinds: a no-op, and a task that awaits asyncio.sleep(SLEEP_S)
TASK_NAMES = {"noop": "bench_noop", "sleep": "bench_sleep"}
SLEEP_S = 0.02


def report_start(key: str) -> None:
    """Called first thing in the task body in the latency phase: one unbuffered line on fd 1."""
    os.write(1, f"S {key} {time.time()!r}\n".encode())


# pgqueuer worker modes. "default": ``qm.run()`` with pgqueuer's defaults (batch_size=10, no
# cap), as its documentation shows it: the main column. "capped": qm.run(batch_size=C//2,
# max_concurrent_tasks=C), the per-worker cap (its dequeue rule: max_concurrent_tasks >= 2 *
# batch_size). "entrypoint": @qm.entrypoint(concurrency_limit=C) with batch_size=C, the
# per-entrypoint cap enforced in SQL across all workers.
PGQ_MODES = ("default", "capped", "entrypoint")
# pgqueuer driver of the worker: "conn" = AsyncpgDriver(one connection), as in pgqueuer's own
# benchmark tool; "pool" = AsyncpgPoolDriver(asyncpg pool).
PGQ_DRIVERS = ("conn", "pool")


def libversion(lib: str) -> str:
    import importlib.metadata as md

    dist = {"litetask": "litetask_async", "pgqueuer": "pgqueuer", "pgqueuer-capped": "pgqueuer",
            "procrastinate": "procrastinate"}[lib]
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


# ----------------------------------------------------------------------------------------------
# producer side


class Producer:
    """Enqueue side of one library on one database."""

    lib = ""
    #: counts jobs not finished yet (queued or running); 0 = all done
    remaining_sql = ""
    #: counts jobs finished successfully (a sanity check, not a metric)
    succeeded_sql = ""
    #: the library's tables, for dead tuples and sizes after a phase
    tables: tuple[str, ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url  # plain postgresql:// URL of this library's database
        self._mon: asyncpg.Connection | None = None

    async def open(self) -> None:
        """Connect and install the schema."""
        self._mon = await asyncpg.connect(self.url)

    async def enqueue_one(self, key: str | None = None) -> None:
        raise NotImplementedError

    async def enqueue_batch(self, n: int, kind: str = "noop") -> None:
        raise NotImplementedError

    async def remaining(self) -> int:
        assert self._mon is not None
        return int(await self._mon.fetchval(self.remaining_sql))

    async def any_left(self) -> bool:
        """Whether any job is not finished yet: ``remaining_sql`` stopped at its first row.
        The completion poll of a phase that waits for every job uses this: a count(*) every
        20 ms scans the whole queue table, dead rows too (2-4 ms of server CPU each, 10-20 % of
        a core taken from the workers it measures)."""
        assert self._mon is not None
        return bool(await self._mon.fetchval(
            "SELECT EXISTS (" + self.remaining_sql.replace("count(*)", "1", 1) + ")"))

    async def succeeded(self) -> int:
        assert self._mon is not None
        return int(await self._mon.fetchval(self.succeeded_sql))

    async def close(self) -> None:
        if self._mon is not None:
            await self._mon.close()
            self._mon = None


class LiteTaskProducer(Producer):
    lib = "litetask"
    remaining_sql = "SELECT count(*) FROM litetask_tasks WHERE status IN ('pending', 'running')"
    succeeded_sql = "SELECT count(*) FROM litetask_tasks WHERE status = 'completed'"
    tables = ("litetask_tasks", "litetask_queue", "litetask_done")

    async def open(self) -> None:
        from litetask_async import LiteTask

        self.app = LiteTask(self.url)
        self.task = self.app.task(name=TASK_NAME)(_lt_noop)
        self.tasks = {"noop": self.task, "sleep": self.app.task(name=TASK_NAMES["sleep"])(_lt_sleep)}
        await self.app.broker()  # opens the pool, applies the schema, starts LISTEN
        await super().open()
        assert self._mon is not None
        if await self._mon.fetchval("SELECT to_regclass('litetask_queue') IS NOT NULL"):
            # schema 7+: pending and running tasks have a table of their own
            self.remaining_sql = "SELECT count(*) FROM litetask_queue"

    async def enqueue_one(self, key: str | None = None) -> None:
        if key is None:
            await self.task.adelay()
        else:
            await self.task.adelay(key)

    async def enqueue_batch(self, n: int, kind: str = "noop") -> None:
        await self.tasks[kind].adelay_many([((), {})] * n)

    async def close(self) -> None:
        await super().close()
        await self.app.aclose()


class PgQueuerProducer(Producer):
    lib = "pgqueuer"
    # pgqueuer deletes a job's row when it finishes (and logs it in pgqueuer_log)
    remaining_sql = "SELECT count(*) FROM pgqueuer"
    succeeded_sql = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
    tables = ("pgqueuer", "pgqueuer_log")

    async def open(self) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        self._conn = await asyncpg.connect(self.url)
        self.queries = Queries(AsyncpgDriver(self._conn))
        await self.queries.install()
        await super().open()

    async def enqueue_one(self, key: str | None = None) -> None:
        await self.queries.enqueue(TASK_NAME, None if key is None else key.encode())

    async def enqueue_batch(self, n: int, kind: str = "noop") -> None:
        await self.queries.enqueue([TASK_NAMES[kind]] * n, [None] * n, [0] * n)

    async def close(self) -> None:
        await super().close()
        await self._conn.close()


def _procrastinate_app(url: str, pool_size: int | None) -> Any:
    import procrastinate

    kw: dict[str, Any] = {"conninfo": url}
    if pool_size is not None:
        kw.update(min_size=pool_size, max_size=pool_size)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(**kw))
    task = app.task(name=TASK_NAME)(_proc_noop)
    sleep_task = app.task(name=TASK_NAMES["sleep"])(_proc_sleep)
    return app, task, sleep_task


class ProcrastinateProducer(Producer):
    lib = "procrastinate"
    remaining_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    succeeded_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    tables = ("procrastinate_jobs", "procrastinate_events")

    async def open(self) -> None:
        self.app, self.task, self.sleep_task = _procrastinate_app(self.url, None)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        await super().open()

    async def enqueue_one(self, key: str | None = None) -> None:
        if key is None:
            await self.task.defer_async()
        else:
            await self.task.defer_async(key=key)

    async def enqueue_batch(self, n: int, kind: str = "noop") -> None:
        task = self.task if kind == "noop" else self.sleep_task
        await task.batch_defer_async(*([{}] * n))

    async def close(self) -> None:
        await super().close()
        await self.app.close_async()


PRODUCERS: dict[str, type[Producer]] = {
    "litetask": LiteTaskProducer,
    "pgqueuer": PgQueuerProducer,
    "pgqueuer-capped": PgQueuerProducer,
    "procrastinate": ProcrastinateProducer,
}


# ----------------------------------------------------------------------------------------------
# the task, once per library (same body)


async def _lt_noop(key: str | None = None) -> None:
    if key is not None:
        report_start(key)


async def _proc_noop(key: str | None = None) -> None:
    if key is not None:
        report_start(key)


async def _pgq_noop(job: Any) -> None:
    if job.payload:
        report_start(job.payload.decode())


async def _lt_sleep() -> None:
    await asyncio.sleep(SLEEP_S)


async def _proc_sleep() -> None:
    await asyncio.sleep(SLEEP_S)


async def _pgq_sleep(job: Any) -> None:
    await asyncio.sleep(SLEEP_S)


# ----------------------------------------------------------------------------------------------
# worker side


class WorkerSide:
    """One worker of one library, opened before the clock starts, run, then stopped cleanly."""

    def __init__(self, url: str, concurrency: int, options: dict[str, Any]) -> None:
        self.url = url
        self.concurrency = concurrency
        self.options = options

    async def open(self) -> None: ...

    async def run(self) -> None: ...

    def stop(self, runner: asyncio.Task[None]) -> None: ...

    async def close(self) -> None: ...


class LiteTaskWorker(WorkerSide):
    async def open(self) -> None:
        from litetask_async import LiteTask
        from litetask_async.worker import Worker

        self.app = LiteTask(self.url)
        self.app.task(name=TASK_NAME)(_lt_noop)
        self.app.task(name=TASK_NAMES["sleep"])(_lt_sleep)
        await self.app.broker()
        self.worker = Worker(self.app, concurrency=self.concurrency, install_signal_handlers=False)

    async def run(self) -> None:
        await self.worker.run()

    def stop(self, runner: asyncio.Task[None]) -> None:
        self.worker.stop()

    async def close(self) -> None:
        await self.app.aclose()


class PgQueuerWorker(WorkerSide):
    mode: str | None = None  # None: --pgq-mode

    async def open(self) -> None:
        from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Queries, QueueManager

        mode = self.mode or self.options.get("pgq_mode", "default")
        if self.options.get("pgq_driver", "conn") == "pool":
            self._conn = await asyncpg.create_pool(self.url, min_size=2, max_size=self.concurrency + 2)
            driver: Any = AsyncpgPoolDriver(self._conn)
        else:
            self._conn = await asyncpg.connect(self.url)
            driver = AsyncpgDriver(self._conn)
        self.qm = QueueManager(Queries(driver))
        c = self.concurrency
        limit = {"concurrency_limit": c} if mode == "entrypoint" else {}
        self.qm.entrypoint(TASK_NAME, **limit)(_pgq_noop)
        self.qm.entrypoint(TASK_NAMES["sleep"], **limit)(_pgq_sleep)
        if mode == "default":
            self.run_kw: dict[str, Any] = {}  # as pgqueuer's documentation runs it
        elif mode == "capped":
            self.run_kw = {"batch_size": max(1, c // 2), "max_concurrent_tasks": c}
        elif mode == "entrypoint":
            self.run_kw = {"batch_size": c}
        else:
            raise ValueError(f"unknown pgqueuer mode {mode!r}")

    async def run(self) -> None:
        await self.qm.run(**self.run_kw)

    def stop(self, runner: asyncio.Task[None]) -> None:
        self.qm.shutdown.set()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._conn.close()


class ProcrastinateWorker(WorkerSide):
    async def open(self) -> None:
        pool = self.options.get("proc_pool", self.concurrency + 2)
        self.app, _, _ = _procrastinate_app(self.url, pool or None)
        await self.app.open_async()

    async def run(self) -> None:
        await self.app.run_worker_async(concurrency=self.concurrency, install_signal_handlers=False)

    def stop(self, runner: asyncio.Task[None]) -> None:
        # procrastinate's documented way to stop a worker run as a task: cancel it; the worker
        # turns that into a graceful stop (running jobs finish) and then re-raises.
        runner.cancel()

    async def close(self) -> None:
        await self.app.close_async()


class PgQueuerCappedWorker(PgQueuerWorker):
    mode = "capped"


WORKERS: dict[str, type[WorkerSide]] = {
    "litetask": LiteTaskWorker,
    "pgqueuer": PgQueuerWorker,
    "pgqueuer-capped": PgQueuerCappedWorker,
    "procrastinate": ProcrastinateWorker,
}
