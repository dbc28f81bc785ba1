"""Peer benchmark: huey (SqliteHuey / SqliteStorage) measured with the same
workload shapes we use for litetask_async, so both can be compared in one run.

    python benchmarks/peer_huey.py [workdir]        # prints a table
    from benchmarks.peer_huey import run_huey_benchmark

Every phase runs on its own freshly created SQLite file inside ``workdir``
(file plus -wal/-shm removed before and after the phase).  huey storage
settings are huey's defaults: ``SqliteHuey(name, filename=...)`` i.e. WAL
journal, ``fsync=None`` (SQLite's compiled-in ``synchronous`` is left
alone), 8 MB cache, pickle serializer, results=True, store_none=False.

What is measured, and how it maps onto the litetask_async numbers
-----------------------------------------------------------------
* ``enqueue_one_per_s`` - n_tasks ``noop()`` calls (huey's producer API:
  calling a ``@huey.task()`` wrapper enqueues it and returns a ``Result``)
  from a plain synchronous loop.  Each call is one autocommit
  ``BEGIN EXCLUSIVE; INSERT INTO task ...; COMMIT``.

* ``enqueue_concurrent_per_s`` - huey has NO asyncio API (producer and
  consumer are purely synchronous/threaded; the task decorator even rejects
  ``async def``), so the closest equivalent of our "1,000 concurrent
  enqueues" benchmark is 1,000 ``noop()`` calls submitted to a
  ``ThreadPoolExecutor`` of 32 threads sharing one ``SqliteHuey`` instance
  (the normal way to share huey in a threaded app).  Note that huey's
  ``BaseSqlStorage`` keeps ONE sqlite3 connection per storage object guarded by
  a ``threading.Lock``, so those enqueues are serialized inside huey anyway.

* ``process_noop_per_s`` / ``process_noop_thread8_per_s`` /
  ``process_noop_process_per_s`` - n_tasks no-op tasks are enqueued first
  (not timed), then a huey ``Consumer`` is started in-process
  (``worker_type='thread'`` with workers=1 or 8, or ``worker_type='process'``
  with workers=1, which forks) and we time from just before
  ``Consumer.start()`` until the n-th task has finished.  Completion is
  detected without polling: a receiver connected to huey's
  ``SIGNAL_COMPLETE`` / ``SIGNAL_ERROR`` signals (emitted by the worker after the
  task body, result handling and revoke-key cleanup) increments a
  fork-shared ``multiprocessing.Value`` and sets a fork-shared
  ``multiprocessing.Event`` at n; the main thread just blocks on the event.
  Per task huey does: a ``SELECT 1`` quick check, a ``BEGIN EXCLUSIVE``
  select+delete of the task row, a revocation ``peek_many`` read, and a
  ``BEGIN EXCLUSIVE`` delete of the task's revoke key (huey does this even for
  never-revoked tasks).  The no-op returns None, so nothing is written to the
  result store.  All thread workers (and the scheduler thread) share the one
  storage connection/lock of the consumer's Huey instance, exactly as in
  ``huey_consumer -k thread``.

* ``latency_*`` - enqueue-to-start latency over n_latency sequential tasks
  with a running consumer (thread, workers=1): ``t0 = time.time()``, enqueue
  ``record_start()`` whose body returns ``time.time()`` (stored by huey in its
  result store), wait for that result, latency = start - t0; next.  The
  producer uses a separate SqliteHuey instance (its own connection) on the same
  file, like a separate producer process would.  Waiting uses
  ``Result.get(blocking=True, backoff=1.0, max_delay=0.002)``, i.e. a 2 ms
  result poll; that only paces the loop, it is not part of the measured
  latency (the start time is taken inside the task).

  - ``latency_p50_ms`` / ``latency_p95_ms``: huey's DEFAULT consumer polling
    (``initial_delay=0.1``, ``backoff=1.15``, ``max_delay=10.0``).  huey's
    SQLite storage is non-blocking, so an idle worker sleeps ``delay``
    between dequeue attempts; the delay resets to ``initial_delay`` after
    each task.  With back-to-back sequential probes the next task therefore
    lands just after the worker started its first 100 ms sleep, so expect
    latency ~= initial_delay (~100 ms).  (With randomly spaced arrivals it
    would be spread over the 100 ms..10 s backoff window instead.)
  - ``latency_fastpoll_p50_ms`` / ``p95``: consumer tuned for low latency
    (``FASTPOLL`` below: ``initial_delay=0.001``, ``backoff=1.1``,
    ``max_delay=0.005``), i.e. the fairest setting for huey: it busy-polls
    SQLite at 1-5 ms when idle.

Consumer lifecycle pitfalls handled here
----------------------------------------
* ``Consumer.run()`` blocks the calling thread forever (its main loop waits on
  the stop flag / OS signals), so we use the lower-level
  ``Consumer.start()`` (spawns scheduler + workers and returns) and
  ``Consumer.stop(graceful=True)`` (sets the stop flag and joins workers and
  scheduler; with ``shutdown_timeout`` set it falls back to interrupting).
* ``Consumer.start()`` installs SIGINT/SIGTERM/SIGHUP handlers via
  ``signal.signal`` (only legal in the main thread and it would hijack the
  host's Ctrl-C); ``_QuietConsumer`` overrides ``_set_signal_handlers`` to a
  no-op so the benchmark can run from any thread.
* ``worker_type='process'`` forks (``multiprocessing.get_context('fork')``);
  ``start()`` closes the consumer Huey's sqlite connection before forking, and
  we also close the producer's connection first so no open SQLite handle is
  carried across fork.  Forked children inherit the task registry and the
  signal receivers, so nothing needs to be pickled.  The process-mode stop
  flag is a pipe (``ForkSafeFlag``) that huey never closes; we close its fds.
* ``periodic=False`` (no periodic tasks exist; avoids irrelevant scheduler
  work).  The scheduler thread/process still runs (1 s interval) as usual.
* huey logs one INFO line per task ("Executing ...", "... executed in");
  ``huey_consumer`` configures logging at INFO by default so a CLI consumer
  pays for that I/O.  Here logging is left unconfigured (effective level
  WARNING), i.e. huey's best case.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import huey as huey_pkg
from huey import signals as S
from huey.consumer import Consumer

if __package__:
    from . import _huey_tasks as T
else:  # executed as a script: benchmarks/ is sys.path[0]
    import _huey_tasks as T

CONCURRENT_ENQUEUES = 1000
CONCURRENT_THREADS = 32
CONCURRENT_ROUNDS = 5  # median of these, as bench_embedded's concurrent phase

# huey's own Consumer defaults, spelled out for the report.
DEFAULT_POLL = dict(initial_delay=0.1, backoff=1.15, max_delay=10.0)
# Low-latency consumer tuning (fair to huey).
FASTPOLL = dict(initial_delay=0.001, backoff=1.1, max_delay=0.005)

_FORK = multiprocessing.get_context("fork")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _db_files(path: str) -> list[str]:
    return [path, path + "-wal", path + "-shm", path + "-journal"]


def _remove_db(path: str) -> None:
    for p in _db_files(path):
        try:  # noqa: SIM105
            os.remove(p)
        except FileNotFoundError:
            pass


def _fresh_db(workdir: str, tag: str) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"huey_bench_{tag}.db")
    _remove_db(path)
    return path


class _QuietConsumer(Consumer):
    """huey Consumer that does not install process-wide signal handlers."""

    def _set_signal_handlers(self):
        pass


def _start_consumer(h, **options) -> Consumer:
    opts = dict(periodic=False, shutdown_timeout=10, check_worker_health=False)
    opts.update(options)
    c = _QuietConsumer(h, **opts)
    c.start()
    return c


def _stop_consumer(c: Consumer) -> None:
    c.stop(graceful=True)
    procs = [p for _, p in c.worker_threads] + [c.scheduler]
    for p in procs:  # belt and braces: nothing may outlive the phase
        p.join(5)
        if c.environment.is_alive(p) and isinstance(p, _FORK.Process):
            p.kill()
            p.join(5)
    alive = [p for p in procs if c.environment.is_alive(p)]
    if alive:
        raise RuntimeError(f"huey consumer did not stop: {alive}")
    flag = c.stop_flag  # ForkSafeFlag (process mode) leaks a pipe otherwise
    for fd_name in ("_r", "_w"):
        fd = getattr(flag, fd_name, None)
        if isinstance(fd, int):
            try:  # noqa: SIM105
                os.close(fd)
            except OSError:
                pass
    c.huey.storage.close()


class _DoneCounter:
    """Counts finished tasks via huey signals; works across fork()."""

    def __init__(self, h, n: int):
        self.n = n
        self.done = _FORK.Value("q", 0)
        self.errors = _FORK.Value("q", 0)
        self.event = _FORK.Event()
        done, errors, event = self.done, self.errors, self.event

        def receiver(signal, task, *args, **kwargs):
            with done.get_lock():
                done.value += 1
                if signal != S.SIGNAL_COMPLETE:
                    errors.value += 1
                if done.value >= n:
                    event.set()

        h.signal(S.SIGNAL_COMPLETE, S.SIGNAL_ERROR)(receiver)

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


def _pct(samples: list[float], q: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


# --------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------
def bench_enqueue_one(workdir: str, n: int) -> float:
    path = _fresh_db(workdir, "enqueue_one")
    h, tasks = T.make_huey(path)
    noop = tasks["noop"]
    try:
        h.storage.conn  # noqa: B018  (open the connection / set WAL outside the timing)
        t0 = time.perf_counter()
        for _ in range(n):
            noop()
        dt = time.perf_counter() - t0
        assert h.pending_count() == n, h.pending_count()
        return n / dt
    finally:
        h.storage.close()
        _remove_db(path)


def bench_enqueue_concurrent(workdir: str, n: int = CONCURRENT_ENQUEUES,
                             threads: int = CONCURRENT_THREADS, rounds: int = CONCURRENT_ROUNDS) -> float:
    """n enqueues from ``threads`` threads, ``rounds`` times; the median round's rate (as
    litetask's concurrent phase measures it)."""
    path = _fresh_db(workdir, "enqueue_concurrent")
    h, tasks = T.make_huey(path)
    noop = tasks["noop"]
    try:
        h.storage.conn  # noqa: B018
        times = []
        with ThreadPoolExecutor(max_workers=threads) as pool:
            # Pre-spawn all pool threads so thread creation is not timed.
            barrier = threading.Barrier(threads)
            list(pool.map(lambda _: barrier.wait(), range(threads)))
            for _ in range(rounds):
                t0 = time.perf_counter()
                futures = [pool.submit(noop) for _ in range(n)]
                for f in futures:
                    f.result()
                times.append(time.perf_counter() - t0)
        assert h.pending_count() == n * rounds, h.pending_count()
        return n / statistics.median(times)
    finally:
        h.storage.close()
        _remove_db(path)


def bench_process(workdir: str, n: int, worker_type: str = "thread",
                  workers: int = 1) -> float:
    path = _fresh_db(workdir, f"process_{worker_type}{workers}")
    producer, ptasks = T.make_huey(path)
    noop = ptasks["noop"]
    for _ in range(n):  # setup, not timed
        noop()
    assert producer.pending_count() == n
    producer.storage.close()  # no open sqlite handle across fork()

    h, _ = T.make_huey(path)
    counter = _DoneCounter(h, n)
    c = None
    try:
        t0 = time.perf_counter()
        c = _start_consumer(h, worker_type=worker_type, workers=workers,
                            **DEFAULT_POLL)
        finished = counter.wait(timeout=max(60.0, n / 20))
        dt = time.perf_counter() - t0
    finally:
        if c is not None:
            _stop_consumer(c)
    if not finished:
        raise RuntimeError(f"huey {worker_type}x{workers}: only "
                           f"{counter.done.value}/{n} tasks finished")
    if counter.errors.value:
        raise RuntimeError(f"{counter.errors.value} huey tasks failed")
    remaining = h.pending_count()
    h.storage.close()
    _remove_db(path)
    assert remaining == 0, remaining
    return n / dt


def bench_latency(workdir: str, n: int, poll: dict, tag: str,
                  warmup: int = 3) -> list[float]:
    """Returns enqueue-to-start latencies in milliseconds."""
    path = _fresh_db(workdir, f"latency_{tag}")
    h, _ = T.make_huey(path)          # consumer side
    producer, ptasks = T.make_huey(path)  # producer side (own connection)
    probe = ptasks["record_start"]
    c = _start_consumer(h, worker_type="thread", workers=1, **poll)
    lat = []
    try:
        for i in range(warmup + n):
            t0 = time.time()
            res = probe()
            started = res.get(blocking=True, timeout=30, backoff=1.0,
                              max_delay=0.002)
            if i >= warmup:
                lat.append((started - t0) * 1000.0)
    finally:
        _stop_consumer(c)
        producer.storage.close()
        _remove_db(path)
    return lat


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------
def run_huey_benchmark(workdir: str, n_tasks: int = 2000,
                       n_latency: int = 200) -> dict[str, float]:
    """Run all huey phases; returns jobs/s and latency (ms) figures.

    huey has no asyncio API: "concurrent enqueue" is emulated with a
    32-thread pool (see module docstring)."""
    out: dict[str, float] = {}
    out["enqueue_one_per_s"] = bench_enqueue_one(workdir, n_tasks)
    out["enqueue_concurrent_per_s"] = bench_enqueue_concurrent(workdir)
    out["process_noop_per_s"] = bench_process(workdir, n_tasks, "thread", 1)
    out["process_noop_thread8_per_s"] = bench_process(workdir, n_tasks,
                                                      "thread", 8)
    out["process_noop_process_per_s"] = bench_process(workdir, n_tasks,
                                                      "process", 1)
    lat = bench_latency(workdir, n_latency, DEFAULT_POLL, "default")
    out["latency_p50_ms"] = _pct(lat, 50)
    out["latency_p95_ms"] = _pct(lat, 95)
    lat = bench_latency(workdir, n_latency, FASTPOLL, "fastpoll")
    out["latency_fastpoll_p50_ms"] = _pct(lat, 50)
    out["latency_fastpoll_p95_ms"] = _pct(lat, 95)
    return out


def _main(argv: list[str]) -> None:
    import tempfile

    workdir = argv[1] if len(argv) > 1 else tempfile.mkdtemp(prefix="huey_bench_")
    t0 = time.perf_counter()
    res = run_huey_benchmark(workdir)
    total = time.perf_counter() - t0
    print(f"huey {huey_pkg.__version__} (SqliteHuey), workdir={workdir}, "
          f"cpus={os.cpu_count()}, total {total:.1f}s")
    width = max(len(k) for k in res)
    print(f"{'metric'.ljust(width)}  {'value':>12}")
    print(f"{'-' * width}  {'-' * 12}")
    for k, v in res.items():
        print(f"{k.ljust(width)}  {v:12.2f}")


if __name__ == "__main__":
    _main(sys.argv)
