"""Embedded benchmark: litetask_async on SQLite and on memory, next to huey's SqliteHuey.

    python benchmarks/bench_embedded.py [--n 10000] [--n-latency 200] [--json out.json]

One run measures litetask_async on SQLite (a fresh file per phase in a temp dir), on memory
(``memory://bench-<phase>``) and huey (``peer_huey.run_huey_benchmark``) and prints one table.
Benchmarks never assert speed; the only checks are correctness ones (all tasks stored, none
failed), which raise if the benchmark itself went wrong. See ``benchmarks/README.md`` for what
each row means and how it maps onto huey's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import litetask_async
from litetask_async import LiteTask
from litetask_async.brokers.sqlite import SQLiteWriter, writer_for
from litetask_async.worker import Worker

if __package__:
    from . import _bench_tasks as T
else:  # run as a script: benchmarks/ is sys.path[0]
    import _bench_tasks as T

HERE = os.path.dirname(os.path.abspath(__file__))

CONCURRENT_ENQUEUES = 1000
CONCURRENT_ROUNDS = 5  # median of these (see bench_enqueue_concurrent)
POOL_ROUNDS = 3  # pool phase + plain pool, alternated; medians (see bench_pool_pair)
CONCURRENCY = 10  # worker concurrency in the processing and latency phases
SYNC_THREADS = 8
LOOP_CHECK_CALLS = 1000
FASTPOLL_S = 0.002  # SQLiteBroker.poll_interval for the "fast poll" latency variant
POLL_COMPLETION_S = 0.05  # how often the producer checks whether processing is finished
FINAL = ("completed", "failed", "cancelled")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

class Backend:
    """Where one phase stores its tasks: a fresh SQLite file or a fresh memory store."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.workdir = workdir

    def url(self, phase: str) -> str:
        if self.kind == "memory":
            return f"memory://bench-{phase}"
        path = os.path.join(self.workdir, f"litetask_{phase}.db")
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        return "sqlite:///" + path  # path is absolute: sqlite:////abs/path.db

    @staticmethod
    def path(url: str) -> str:
        return url[len("sqlite:///"):]


def _writer(url: str) -> SQLiteWriter | None:
    """This process's SQLite writer for ``url``; call it while a broker on ``url`` is open
    (otherwise ``writer_for`` would start a new one)."""
    return writer_for(Backend.path(url)) if url.startswith("sqlite") else None


def _stop(writer: SQLiteWriter | None) -> None:
    """End a phase's writer thread. Some versions of the broker keep it for the life of the
    process, others stop it with the last broker; stopping a stopped writer does nothing."""
    if writer is not None:
        writer.stop()


def _sqlite_count(url: str, where: str = "1") -> int:
    with sqlite3.connect(Backend.path(url), timeout=30) as conn:
        return conn.execute(f"SELECT count(*) FROM litetask_tasks WHERE {where}").fetchone()[0]


def _pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


@contextmanager
def _count_new_event_loops() -> Iterator[list[int]]:
    """Count calls of asyncio's new_event_loop (what asyncio.run / anyio.run use) meanwhile."""
    counter = [0]
    orig = asyncio.events.new_event_loop

    def counting() -> asyncio.AbstractEventLoop:
        counter[0] += 1
        return orig()

    asyncio.events.new_event_loop = counting  # type: ignore[assignment]
    asyncio.new_event_loop = counting  # type: ignore[assignment]
    try:
        yield counter
    finally:
        asyncio.events.new_event_loop = orig  # type: ignore[assignment]
        asyncio.new_event_loop = orig  # type: ignore[assignment]


class WorkerProcess:
    """A litetask worker in its own process (``_bench_tasks.worker_main``), for SQLite phases."""

    def __init__(self, url: str, concurrency: int = CONCURRENCY, poll: float | None = None) -> None:
        env = dict(os.environ, LITETASK_BENCH_URL=url)
        code = f"import sys; sys.path.insert(0, {HERE!r}); import _bench_tasks as t; t.worker_main()"
        argv = [sys.executable, "-c", code, str(concurrency)] + ([repr(poll)] if poll else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            self.stop()
            raise RuntimeError(f"worker subprocess said {line!r}, expected {word!r}")

    def check(self) -> None:
        """Raise if the worker process has exited (it logs why on stderr)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the worker subprocess exited with code {self.proc.returncode}")

    def wait_ready(self) -> None:
        """Returns once the subprocess has imported everything (interpreter start not timed)."""
        self._expect("ready")

    def go(self) -> float:
        """Tell it to start the worker; returns the wall-clock time at which we did."""
        assert self.proc.stdin is not None
        t0 = time.time()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self._expect("started")
        return t0

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


# --------------------------------------------------------------------------------------------
# enqueue phases
# --------------------------------------------------------------------------------------------

def bench_enqueue_one_sync(backend: Backend, n: int) -> dict[str, float]:
    """n x ``task.delay()`` from a plain loop (the sync facade), plus the new-loop/thread check."""
    url = backend.url("enqueue_one_sync")
    app, tasks = T.make_app(url)
    delay = tasks["noop_async"].delay
    writer = None
    try:
        app.get_task_sync("warm-up")  # starts the portal thread and opens its broker: not timed
        writer = _writer(url)
        threads_before = {t.ident for t in threading.enumerate()}
        with _count_new_event_loops() as loops:
            t0 = time.perf_counter()
            for _ in range(n):
                delay()
            dt = time.perf_counter() - t0
        new_threads = [t.name for t in threading.enumerate() if t.ident not in threads_before]
        if backend.kind == "sqlite" and _sqlite_count(url) != n:
            raise RuntimeError(f"expected {n} stored tasks, found {_sqlite_count(url)}")
    finally:
        app.close()
        _stop(writer)
    return {
        "enqueue_one_sync_per_s": n / dt,
        "sync_delay_calls_checked": n,
        "sync_delay_new_threads": len(new_threads),
        "sync_delay_new_event_loops": loops[0],
    }


def bench_enqueue_one_async(backend: Backend, n: int) -> dict[str, float]:
    """n x ``await task.adelay()`` one after the other in one coroutine."""
    url = backend.url("enqueue_one_async")

    async def run() -> float:
        app, tasks = T.make_app(url)
        adelay = tasks["noop_async"].adelay
        await app.broker()  # open before timing (huey's connection is opened untimed too)
        writer = _writer(url)
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                await adelay()
            return time.perf_counter() - t0
        finally:
            await app.aclose()
            _stop(writer)

    dt = asyncio.run(run())
    if backend.kind == "sqlite" and _sqlite_count(url) != n:
        raise RuntimeError(f"expected {n} stored tasks, found {_sqlite_count(url)}")
    return {"enqueue_one_async_per_s": n / dt}


def bench_enqueue_concurrent(backend: Backend, n: int = CONCURRENT_ENQUEUES,
                             rounds: int = CONCURRENT_ROUNDS) -> dict[str, float]:
    """n concurrent ``adelay()`` calls (``asyncio.gather``), ``rounds`` times one after another
    on one app; the median round's rate (one round lasts 20-50 ms: a garbage collection or a
    scheduler hiccup in it moved a single measurement by half). For SQLite also the commits
    spent, per round."""
    url = backend.url("enqueue_concurrent")

    async def run() -> tuple[list[float], int | None]:
        app, tasks = T.make_app(url)
        adelay = tasks["noop_async"].adelay
        await app.broker()
        writer = _writer(url)
        try:
            c0 = writer.commits if writer else 0
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await asyncio.gather(*(adelay() for _ in range(n)))
                times.append(time.perf_counter() - t0)
            return times, (writer.commits - c0 if writer else None)
        finally:
            await app.aclose()
            _stop(writer)

    times, commits = asyncio.run(run())
    if backend.kind == "sqlite" and _sqlite_count(url) != n * rounds:
        raise RuntimeError(f"expected {n * rounds} stored tasks, found {_sqlite_count(url)}")
    out: dict[str, float] = {"enqueue_concurrent_per_s": n / statistics.median(times)}
    if commits is not None:
        out["enqueue_concurrent_commits"] = commits / rounds
    return out


def bench_enqueue_threads(backend: Backend, n: int, threads: int = SYNC_THREADS) -> dict[str, float]:
    """n ``delay()`` calls split over ``threads`` threads started together (one shared portal)."""
    url = backend.url("enqueue_threads")
    app, tasks = T.make_app(url)
    delay = tasks["noop_async"].delay
    per = n // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def body() -> None:
        barrier.wait()
        try:
            for _ in range(per):
                delay()
        except BaseException as exc:
            errors.append(exc)

    writer = None
    try:
        app.get_task_sync("warm-up")
        writer = _writer(url)
        pool = [threading.Thread(target=body) for _ in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
        if backend.kind == "sqlite" and _sqlite_count(url) != per * threads:
            raise RuntimeError(f"expected {per * threads} stored tasks, found {_sqlite_count(url)}")
    finally:
        app.close()
        _stop(writer)
    return {"enqueue_threads8_sync_per_s": per * threads / dt}


# --------------------------------------------------------------------------------------------
# processing phases
# --------------------------------------------------------------------------------------------

async def _wait_all_final_memory(app: LiteTask, ids: list[str], timeout: float,
                                 worker_task: asyncio.Task[None]) -> float:
    """Wait until every task is final (cheap: tasks finish roughly in order, so only the first
    unfinished one is re-read each round); returns the latest ``finished_at`` (epoch s)."""
    deadline = time.monotonic() + timeout
    i = 0
    while i < len(ids):
        rec = await app.get_task(ids[i])
        if rec is not None and rec.is_final:
            i += 1
            continue
        if worker_task.done():
            worker_task.result()
            raise RuntimeError("the worker stopped")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {i}/{len(ids)} tasks finished after {timeout}s")
        await asyncio.sleep(0.01)
    last = 0.0
    for tid in ids:  # after the fact, not timed
        rec = await app.get_task(tid)
        assert rec is not None and rec.finished_at is not None
        if rec.status.value != "completed":
            raise RuntimeError(f"task {tid} ended {rec.status.value}: {rec.error}")
        last = max(last, rec.finished_at.timestamp())
    return last


def _wait_all_final_sqlite(url: str, n: int, timeout: float, wp: WorkerProcess) -> float:
    """Poll a COUNT on the file every 50 ms; returns max(finished_at) (exact end, not the poll)."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(Backend.path(url), timeout=30)
    try:
        marks = ",".join("?" * len(FINAL))
        while True:
            done = conn.execute(f"SELECT count(*) FROM litetask_tasks WHERE status IN ({marks})",
                                FINAL).fetchone()[0]
            if done >= n:
                break
            wp.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done}/{n} tasks finished after {timeout}s")
            time.sleep(POLL_COMPLETION_S)
        last, bad = conn.execute(
            "SELECT max(finished_at), sum(status != 'completed') FROM litetask_tasks").fetchone()
        if bad:
            err = conn.execute("SELECT error FROM litetask_tasks WHERE status != 'completed' LIMIT 1").fetchone()
            raise RuntimeError(f"{bad} task(s) did not complete; first error: {err[0]}")
        return float(last)
    finally:
        conn.close()


def bench_process(backend: Backend, n: int, task_key: str, metric: str) -> dict[str, float]:
    """n tasks pre-enqueued with ``adelay_many``, then ONE worker (concurrency 10) runs them.

    Timed from telling the worker to start until the last task's ``finished_at`` (the moment its
    outcome was written). SQLite: the worker is a subprocess (its own event loop and GIL; its
    interpreter start-up and imports are not timed, its broker open and pool start are).
    Memory: the worker is an asyncio task on the producer's loop (a memory store cannot be shared
    across processes); the producer is idle meanwhile except for a cheap completion check.

    For the pool (``noop_sync``) one ``record_start_sync`` probe is enqueued first: its body's
    start time splits the wall time into pool start-up (spawning the pool processes) and the
    steady rate after it (reported as extra rows; the main metric still counts from the start).
    """
    url = backend.url(metric.replace("_per_s", ""))
    timeout = max(60.0, n / 20)
    probe = task_key == "noop_sync"
    out: dict[str, float] = {}

    def split(t0: float, last: float, probe_start: float | None) -> None:
        out[metric] = n / (last - t0)
        if probe_start is not None:
            out["process_pool_startup_s"] = probe_start - t0
            out["process_noop_pool_after_startup_per_s"] = n / (last - probe_start)

    async def enqueue(app: LiteTask, tasks: dict[str, Any]) -> tuple[str | None, list[str]]:
        first = await tasks["record_start_sync"].adelay() if probe else None
        return first, await tasks[task_key].adelay_many([((), {})] * n)

    if backend.kind == "sqlite":
        wp = WorkerProcess(url)  # starts importing while we enqueue

        async def pre() -> str | None:
            app, tasks = T.make_app(url)
            await app.broker()
            writer = _writer(url)
            try:
                first, _ = await enqueue(app, tasks)
            finally:
                await app.aclose()
                _stop(writer)
            return first

        try:
            first = asyncio.run(pre())
            total = n + (1 if probe else 0)
            if _sqlite_count(url, "status = 'pending'") != total:
                raise RuntimeError("pre-enqueue failed")
            wp.wait_ready()
            t0 = wp.go()
            last = _wait_all_final_sqlite(url, total, timeout, wp)
        finally:
            wp.stop()
        probe_start = None
        if first is not None:
            with sqlite3.connect(Backend.path(url)) as conn:
                probe_start = float(json.loads(conn.execute(
                    "SELECT result FROM litetask_tasks WHERE id = ?", (first,)).fetchone()[0]))
        split(t0, last, probe_start)
        return out

    async def run() -> None:
        app, tasks = T.make_app(url)
        first, ids = await enqueue(app, tasks)
        worker = Worker(app, concurrency=CONCURRENCY, install_signal_handlers=False)
        t0 = time.time()
        running = asyncio.create_task(worker.run())
        try:
            last = await _wait_all_final_memory(app, ([first] if first else []) + ids, timeout,
                                                running)
            probe_start = None
            if first is not None:
                rec = await app.get_task(first)
                assert rec is not None
                probe_start = float(rec.result)
        finally:
            worker.stop()
            await running
            await app.aclose()
        split(t0, last, probe_start)

    asyncio.run(run())
    return out


# --------------------------------------------------------------------------------------------
# latency
# --------------------------------------------------------------------------------------------

async def _probe_loop(app: LiteTask, probe: Any, n: int, check: Callable[[], None],
                      warmup: int = 3) -> tuple[list[float], list[float]]:
    """n sequential probes: returns (enqueue-to-start, start-to-outcome-stored) in ms."""
    lat, lag = [], []
    for i in range(warmup + n):
        t0 = time.time()
        tid = await probe.adelay()
        for _ in range(30):
            try:
                rec = await app.wait(tid, timeout=1.0)
                break
            except TimeoutError:
                check()  # raises if the worker is gone
        else:
            raise RuntimeError(f"latency probe {tid} did not finish within 30 s")
        if rec.status.value != "completed" or rec.finished_at is None:
            raise RuntimeError(f"latency probe ended {rec.status.value}: {rec.error}")
        if i >= warmup:
            started = float(rec.result)
            lat.append((started - t0) * 1000.0)
            lag.append((rec.finished_at.timestamp() - started) * 1000.0)
    return lat, lag


def bench_latency(backend: Backend, n: int, poll: float | None = None, prefix: str = "latency",
                  probe_key: str = "record_start", lag_prefix: str | None = None) -> dict[str, float]:
    """Enqueue-to-start over n sequential probes with a running, idle worker.

    SQLite: worker in a separate process (``poll`` overrides its idle data_version poll).
    Memory: worker as an asyncio task on the producer's loop (wake-ups are pushed).
    ``lag_prefix``: also report start-to-outcome-stored (the probe's ``finished_at`` minus the
    start time it returned), i.e. how long a finished task stays invisible to ``wait``.
    """
    url = backend.url(prefix)

    async def run(wp: WorkerProcess | None) -> tuple[list[float], list[float]]:
        app, tasks = T.make_app(url)
        await app.broker()  # creates the file before the worker process opens it
        writer = _writer(url)
        worker = running = None
        if wp is not None:
            wp.wait_ready()
            wp.go()
            check = wp.check
        else:
            worker = Worker(app, concurrency=CONCURRENCY, install_signal_handlers=False)
            running = asyncio.create_task(worker.run())

            def check() -> None:
                if running.done():
                    running.result()
                    raise RuntimeError("the worker stopped")
        try:
            return await _probe_loop(app, tasks[probe_key], n, check)
        finally:
            if worker is not None and running is not None:
                worker.stop()
                await running
            await app.aclose()
            _stop(writer)

    if backend.kind == "sqlite":
        wp = WorkerProcess(url, poll=poll)
        try:
            lat, lag = asyncio.run(run(wp))
        finally:
            wp.stop()
    else:
        lat, lag = asyncio.run(run(None))
    out = {f"{prefix}_p50_ms": _pct(lat, 50), f"{prefix}_p95_ms": _pct(lat, 95)}
    if lag_prefix:
        out[f"{lag_prefix}_p50_ms"] = _pct(lag, 50)
        out[f"{lag_prefix}_p95_ms"] = _pct(lag, 95)
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def bench_idle_cpu(backend: Backend, seconds: float = 5.0) -> dict[str, float]:
    """CPU used by an idle SQLite worker process (waiting for work), in % of one core."""
    url = backend.url("idle")

    async def create() -> None:
        app, _tasks = T.make_app(url)
        await app.broker()
        await app.aclose()

    asyncio.run(create())
    wp = WorkerProcess(url)
    try:
        wp.wait_ready()
        wp.go()
        time.sleep(1.0)  # past its start-up
        wp.check()
        c0, t0 = _cpu_seconds(wp.proc.pid), time.monotonic()
        time.sleep(seconds)
        wp.check()
        used = _cpu_seconds(wp.proc.pid) - c0
        return {"idle_worker_cpu_pct": 100 * used / (time.monotonic() - t0)}
    finally:
        wp.stop()


def bench_plain_process_pool(n: int, processes: int = 2, in_flight: int = CONCURRENCY) -> dict[str, float]:
    """The yardstick for the pool rows: no-op functions through a plain ``ProcessPoolExecutor``
    (spawn, ``processes`` processes, ``in_flight`` submitted at a time from asyncio)."""
    import concurrent.futures
    import multiprocessing

    async def run() -> float:
        loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx) as ex:
            await asyncio.gather(*[loop.run_in_executor(ex, T.plain_noop) for _ in range(2 * processes)])
            sem = asyncio.Semaphore(in_flight)

            async def one() -> None:
                async with sem:
                    await loop.run_in_executor(ex, T.plain_noop)

            t0 = time.perf_counter()
            await asyncio.gather(*[one() for _ in range(n)])
            return n / (time.perf_counter() - t0)

    return {"plain_process_pool_per_s": asyncio.run(run())}


def bench_pool_pair(backend: Backend, n: int, rounds: int = POOL_ROUNDS) -> dict[str, float]:
    """The pool phase and its plain ``ProcessPoolExecutor`` yardstick, one right after the other,
    ``rounds`` times; the median of each figure. Measured once each, minutes apart, the two
    landed in different states of this shared 2-core machine: the ratio moved between 0.78x and
    0.96x from run to run while either side alone moved by a fifth."""
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for result in (bench_process(backend, n, "noop_sync", "process_noop_pool_per_s"),
                       bench_plain_process_pool(n)):
            for key, value in result.items():
                samples.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def run_litetask(kind: str, workdir: str, n: int, n_latency: int,
                 log: Callable[[str], None]) -> dict[str, float]:
    backend = Backend(kind, workdir)
    out: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("enqueue one (sync delay)", lambda: bench_enqueue_one_sync(backend, n)),
        ("enqueue one (async adelay)", lambda: bench_enqueue_one_async(backend, n)),
        ("enqueue concurrent", lambda: bench_enqueue_concurrent(backend)),
        ("enqueue from 8 threads", lambda: bench_enqueue_threads(backend, n)),
        ("process async no-ops", lambda: bench_process(backend, n, "noop_async", "process_noop_async_per_s")),
        ("process pool no-ops", lambda: bench_process(backend, n, "noop_sync", "process_noop_pool_per_s")
         if kind != "sqlite" else bench_pool_pair(backend, n)),
        ("latency", lambda: bench_latency(backend, n_latency, lag_prefix="result_lag_async")),
        ("latency, plain def (pool)", lambda: bench_latency(
            backend, max(10, n_latency // 5), prefix="latency_pool", probe_key="record_start_sync",
            lag_prefix="result_lag_pool")),
    ]
    if kind == "sqlite":
        steps.append(("latency, 2 ms poll", lambda: bench_latency(
            backend, n_latency, poll=FASTPOLL_S, prefix="latency_fastpoll")))
        steps.append(("idle worker CPU", lambda: bench_idle_cpu(backend)))
    for label, step in steps:
        t0 = time.perf_counter()
        out.update(step())
        log(f"  litetask {kind:6s} {label:28s} {time.perf_counter() - t0:5.1f}s")
    return out


# --------------------------------------------------------------------------------------------
# huey at litetask's durability setting
# --------------------------------------------------------------------------------------------

def run_huey_normal(peer: Any, workdir: str, n: int) -> dict[str, float]:
    """huey's enqueue and processing phases again with ``PRAGMA synchronous=NORMAL``.

    huey's default leaves SQLite's compiled-in ``synchronous=FULL``: in WAL mode that is one
    fsync per commit, and huey commits once per enqueue and twice per processed task. litetask
    uses ``synchronous=NORMAL`` (no fsync at commit; a power loss may drop the last commits, an
    application crash does not). Same durability, same phases: peer_huey's own functions are
    run with a storage class that sets NORMAL (the peer module itself is unchanged).
    """
    from huey.storage import SqliteStorage

    class NormalSyncStorage(SqliteStorage):
        def _create_connection(self):  # type: ignore[no-untyped-def]
            conn = super()._create_connection()
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

    orig = peer.T.make_huey
    peer.T.make_huey = lambda filename, **kw: orig(filename, storage_class=NormalSyncStorage, **kw)
    try:
        return {
            "enqueue_one_per_s": peer.bench_enqueue_one(workdir, n),
            "enqueue_concurrent_per_s": peer.bench_enqueue_concurrent(workdir),
            "process_noop_per_s": peer.bench_process(workdir, n, "thread", 1),
            "process_noop_process_per_s": peer.bench_process(workdir, n, "process", 1),
        }
    finally:
        peer.T.make_huey = orig


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

# (metric, huey key or None, kind): kind "rate" (higher is better), "ms" (lower is better) or
# "info" (no ratio).
ROWS: list[tuple[str, str | None, str]] = [
    ("enqueue_one_sync_per_s", "enqueue_one_per_s", "rate"),
    ("enqueue_one_async_per_s", "enqueue_one_per_s", "rate"),          # huey: sync (no async API)
    ("enqueue_concurrent_per_s", "enqueue_concurrent_per_s", "rate"),  # huey: 32 threads
    ("enqueue_concurrent_commits", "enqueue_concurrent_commits", "info"),
    ("enqueue_threads8_sync_per_s", None, "rate"),
    ("sync_delay_new_threads", None, "info"),
    ("sync_delay_new_event_loops", None, "info"),
    ("process_noop_async_per_s", "process_noop_per_s", "rate"),        # huey: thread worker x1
    ("process_noop_pool_per_s", "process_noop_process_per_s", "rate"),  # huey: 1 forked process
    ("process_pool_startup_s", None, "info"),
    ("process_noop_pool_after_startup_per_s", "process_noop_process_per_s", "rate"),
    ("process_noop_thread8_per_s", "process_noop_thread8_per_s", "info"),  # huey only
    ("latency_p50_ms", "latency_p50_ms", "ms"),
    ("latency_p95_ms", "latency_p95_ms", "ms"),
    ("latency_fastpoll_p50_ms", "latency_fastpoll_p50_ms", "ms"),
    ("latency_fastpoll_p95_ms", "latency_fastpoll_p95_ms", "ms"),
    ("latency_pool_p50_ms", None, "ms"),
    ("latency_pool_p95_ms", None, "ms"),
    ("result_lag_async_p50_ms", None, "ms"),
    ("result_lag_pool_p50_ms", None, "ms"),
    ("result_lag_pool_p95_ms", None, "ms"),
    ("idle_worker_cpu_pct", None, "info"),
]

SAME_DURABILITY_ROWS = [
    ("enqueue_one_sync_per_s", "enqueue_one_per_s"),
    ("enqueue_one_async_per_s", "enqueue_one_per_s"),
    ("enqueue_concurrent_per_s", "enqueue_concurrent_per_s"),
    ("process_noop_async_per_s", "process_noop_per_s"),
    ("process_noop_pool_per_s", "process_noop_process_per_s"),
    ("process_noop_pool_after_startup_per_s", "process_noop_process_per_s"),
]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):d}"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)])

    return "\n".join([line(head), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _ratio(a: float | None, h: float | None, kind: str) -> str:
    if not a or not h or kind == "info":
        return "-"
    return f"{a / h:.2f}x" if kind == "rate" else f"{h / a:.2f}x"


def render_table(lt_sqlite: dict[str, float], lt_memory: dict[str, float],
                 huey: dict[str, float]) -> str:
    head = ("metric", "litetask sqlite", "litetask memory", "huey sqlite", "ratio*")
    rows = []
    for metric, hkey, kind in ROWS:
        a, m = lt_sqlite.get(metric), lt_memory.get(metric)
        h = huey.get(hkey) if hkey else None
        rows.append((metric, _fmt(a), _fmt(m), _fmt(h), _ratio(a, h, kind)))
    return ("ratio* = litetask sqlite / huey for rates, huey / litetask sqlite for latencies "
            "(_ms rows): >1 means litetask is better\n" + _table(head, rows))


def render_pool_yardstick(lt_sqlite: dict[str, float]) -> str:
    head = ("process pool vs plain ProcessPoolExecutor (2 processes, 10 in flight)",
            "litetask sqlite", "plain pool", "ratio")
    plain = lt_sqlite.get("plain_process_pool_per_s")
    rows = [(m, _fmt(lt_sqlite.get(m)), _fmt(plain), _ratio(lt_sqlite.get(m), plain, "rate"))
            for m in ("process_noop_pool_per_s", "process_noop_pool_after_startup_per_s")]
    return _table(head, rows)


def render_same_durability(lt_sqlite: dict[str, float], huey_normal: dict[str, float]) -> str:
    head = ("same durability: huey at synchronous=NORMAL", "litetask sqlite", "huey NORMAL",
            "ratio*")
    rows = []
    for metric, hkey in SAME_DURABILITY_ROWS:
        a, h = lt_sqlite.get(metric), huey_normal.get(hkey)
        rows.append((metric, _fmt(a), _fmt(h), _ratio(a, h, "rate")))
    return _table(head, rows)


NOTES = """\
Notes. huey has no asyncio API: its column shows its sync one-by-one enqueue in both enqueue_one
rows, a 32-thread enqueue for enqueue_concurrent, a thread worker x1 for process_noop_async and
one forked worker process for the pool rows; its commits are 1 per enqueue by its code (not
counted). huey's defaults leave synchronous=FULL (an fsync per commit), litetask uses NORMAL:
see the second table for huey at NORMAL. latency: huey's default poll (100 ms first delay) vs
litetask's socket wake-up; *_fastpoll: huey at 1-5 ms vs litetask polling at 2 ms too. latency_pool
and result_lag_*: litetask only (plain-def probe; time from a task's start until its outcome is
stored). process_pool_startup_s: worker start to first pool task body (spawning the pool).
idle_worker_cpu_pct: an idle SQLite worker process over 5 s. The last table compares the pool
rows with a plain ProcessPoolExecutor (spawn, same 2 processes, 10 in flight) in the same run:
SQLite's pool phase and the plain pool alternated 3 times, medians of each (enqueue_concurrent:
median of 5 rounds, huey's too)."""


def _git_state() -> dict[str, Any]:
    root = os.path.dirname(HERE)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "litetask_async"], cwd=root,
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": rev, "litetask_async_dirty": bool(diff),
            "litetask_async_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000,
                    help="tasks per enqueue/processing phase (2,000 lasted 60-200 ms: one hiccup moved a ratio)")
    ap.add_argument("--n-latency", type=int, default=200, help="sequential latency probes")
    ap.add_argument("--json", metavar="PATH", help="also write all numbers to this JSON file")
    ap.add_argument("--no-huey", action="store_true", help="skip the huey peer benchmark")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="litetask_bench_")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    huey: dict[str, float] = {}
    huey_normal: dict[str, float] = {}
    huey_version = None
    try:
        lt_sqlite = run_litetask("sqlite", workdir, args.n, args.n_latency, log)
        lt_memory = run_litetask("memory", workdir, args.n, args.n_latency, log)
        if not args.no_huey:
            if __package__:
                from . import peer_huey as peer
            else:
                import peer_huey as peer
            import huey as huey_pkg

            huey_version = huey_pkg.__version__
            t0 = time.perf_counter()
            huey = peer.run_huey_benchmark(os.path.join(workdir, "huey"), n_tasks=args.n,
                                           n_latency=args.n_latency)
            huey["enqueue_concurrent_commits"] = CONCURRENT_ENQUEUES  # one transaction per call
            log(f"  huey (peer_huey.run_huey_benchmark)                {time.perf_counter() - t0:5.1f}s")
            t0 = time.perf_counter()
            huey_normal = run_huey_normal(peer, os.path.join(workdir, "huey_normal"), args.n)
            log(f"  huey at synchronous=NORMAL                         {time.perf_counter() - t0:5.1f}s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started

    env = {
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "litetask_async": litetask_async.__version__, "huey": huey_version, **_git_state(),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(f"litetask_async {env['litetask_async']} vs huey {huey_version} | python {env['python']}, "
          f"SQLite {env['sqlite']}, {env['cpus']} CPUs | n={args.n}, concurrent={CONCURRENT_ENQUEUES}, "
          f"latency probes={args.n_latency}, worker concurrency={CONCURRENCY} | total {total:.1f}s, "
          f"load avg {env['loadavg_1min_before_after'][0]} -> {env['loadavg_1min_before_after'][1]}")
    print(render_table(lt_sqlite, lt_memory, huey))
    if huey_normal:
        print()
        print(render_same_durability(lt_sqlite, huey_normal))
    print()
    print(render_pool_yardstick(lt_sqlite))
    print(NOTES)
    result = {"env": env, "params": {"n": args.n, "n_latency": args.n_latency,
                                     "concurrent": CONCURRENT_ENQUEUES, "concurrency": CONCURRENCY,
                                     "sync_threads": SYNC_THREADS, "fastpoll_s": FASTPOLL_S},
              "litetask_sqlite": lt_sqlite, "litetask_memory": lt_memory, "huey_sqlite": huey,
              "huey_sqlite_synchronous_normal": huey_normal, "total_s": total}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
