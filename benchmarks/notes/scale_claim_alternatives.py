"""Diagnostic for ``bench_scale.py``: the CLAIM statement against index/query alternatives.

NOTE (kept as a record, not used by the README): what it showed is in benchmarks/README.md,
"Index/query alternatives": ordering the claim by (priority, run_at, seq) with one index in that
order made a claim on the 1.2M-row table 0.4 ms instead of 25-35 ms; that became migration 5.
It was written against schema 4 and does not run against later schemas (its asserts on the
CLAIM text fail).

    python benchmarks/notes/scale_claim_alternatives.py [--url postgresql://...] [--finished 1000000]
                                                   [--future 200000] [--claims 50]

Not a benchmark of the library (the library is not changed): it copies the big table of
``bench_scale.py`` (1M finished + 200k future-dated pending rows, ``VACUUM (ANALYZE)``-ed) into
one database per alternative (``CREATE DATABASE ... TEMPLATE``), applies the alternative's
index/column change there, and times claims of 10 (committed, prepared, one connection) in
these scenarios:

* A  big + 2,050 due tasks, statistics from before they were enqueued (as in bench_scale.py);
* B  the same after ``ANALYZE`` (the due tasks are in the statistics);
* C  big + 300,000 due tasks (a bulk-enqueue backlog), analysed;
* P  big + 100,000 more future tasks at priority 1 + 2,050 due at priority 0 (the due tasks
     sort after higher-priority future ones), analysed;
* D  empty table + 300,000 due tasks, never analysed (a fresh install right after a bulk enqueue);
* D' the same after ``ANALYZE``.

Alternatives:

* ``current``     the shipped schema and CLAIM;
* ``due_order``   pending index ``(priority DESC, run_at, seq)``, CLAIM ``ORDER BY priority DESC,
                  run_at, seq``: due rows come first inside each priority, so the ordered scan
                  stops after the claimed rows; a future row of a *higher* priority is passed
                  over in the index (on PostgreSQL 18 by skip scan) without a heap visit.
                  Changes the order from "priority, then enqueue order" to "priority, then due
                  time, then enqueue order";
* ``seq_run_at``  pending index ``(priority DESC, seq, run_at)``: the run_at test moves into the
                  index (no heap visit per future row), but the future rows are still walked;
* ``promote``     a ``scheduled`` flag: pending index ``(priority DESC, seq) WHERE status =
                  'pending' AND NOT scheduled``, due index ``(run_at) WHERE status = 'pending'
                  AND scheduled``; CLAIM has no run_at test; a PROMOTE statement (below) clears
                  the flag of rows that fell due. Keeps the documented order; needs a migration
                  and the enqueue/retry/rescue statements to set the flag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
import urllib.parse
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import asyncpg  # noqa: E402
from bench_scale import FILL_FINISHED, FILL_FUTURE, FILL_NAME, substitute  # noqa: E402

from litetask_async.brokers import postgres_sql as sql  # noqa: E402
from litetask_async.brokers.postgres import migrate  # noqa: E402
from tests.pg_server import create_database_async, get_postgres_url  # noqa: E402

CLAIM_DUE_ORDER = sql.CLAIM.replace("ORDER BY priority DESC, seq", "ORDER BY priority DESC, run_at, seq")
assert CLAIM_DUE_ORDER != sql.CLAIM
CLAIM_PROMOTE = sql.CLAIM.replace("WHERE status = 'pending' AND run_at <= now()",
                                  "WHERE status = 'pending' AND NOT scheduled")
assert CLAIM_PROMOTE != sql.CLAIM
PROMOTE = """
UPDATE litetask_tasks SET scheduled = false
WHERE id IN (SELECT id FROM litetask_tasks
             WHERE status = 'pending' AND scheduled AND run_at <= now()
             ORDER BY run_at LIMIT $1 FOR UPDATE SKIP LOCKED)
"""

ALTERNATIVES: dict[str, tuple[list[str], str]] = {
    "current": ([], sql.CLAIM),
    "due_order": ([
        "DROP INDEX litetask_tasks_pending",
        "CREATE INDEX litetask_tasks_pending ON litetask_tasks (priority DESC, run_at, seq) WHERE status = 'pending'",
    ], CLAIM_DUE_ORDER),
    "seq_run_at": ([
        "DROP INDEX litetask_tasks_pending",
        "CREATE INDEX litetask_tasks_pending ON litetask_tasks (priority DESC, seq, run_at) WHERE status = 'pending'",
    ], sql.CLAIM),
    "promote": ([
        "ALTER TABLE litetask_tasks ADD COLUMN scheduled boolean NOT NULL DEFAULT false",
        "UPDATE litetask_tasks SET scheduled = true WHERE status = 'pending' AND run_at > now()",
        "DROP INDEX litetask_tasks_pending",
        "DROP INDEX litetask_tasks_due",
        "CREATE INDEX litetask_tasks_pending ON litetask_tasks (priority DESC, seq) "
        "WHERE status = 'pending' AND NOT scheduled",
        "CREATE INDEX litetask_tasks_due ON litetask_tasks (run_at) WHERE status = 'pending' AND scheduled",
    ], CLAIM_PROMOTE),
}

INSERT_DUE = """
INSERT INTO litetask_tasks (id, name, priority, args, kwargs)
SELECT md5($1 || i), 'bench_noop', $3, '[]'::jsonb, '{}'::jsonb FROM generate_series(1, $2::int) AS i
"""
INSERT_FUTURE_P1 = """
INSERT INTO litetask_tasks (id, name, priority, args, kwargs, run_at)
SELECT md5('future-p1-' || i), 'reports.build', 1, '[]'::jsonb, '{}'::jsonb,
       now() + interval '1 hour' + random() * interval '29 days'
FROM generate_series(1, $1::int) AS i
"""


def _with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def time_claims(c: asyncpg.Connection, claim: str, n: int) -> tuple[float, float, list[str]]:
    tr = c.transaction()
    await tr.start()
    try:
        plan = [r[0] for r in await c.fetch("EXPLAIN (ANALYZE, BUFFERS) " + substitute(
            claim, {"$1": "'w'", "$2": "1", "$3": "10", "$4": "NULL"}))]
    finally:
        await tr.rollback()
    for _ in range(3):  # warm-up
        await c.fetch(claim, "w", 1, 10, None)
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        rows = await c.fetch(claim, "w", 1, 10, None)
        ms.append((time.perf_counter() - t0) * 1000)
        if len(rows) < 10:
            log(f"    short claim: {len(rows)}")
    ms.sort()
    return statistics.median(ms), ms[int(0.95 * (len(ms) - 1))], plan


def plan_gist(plan: list[str]) -> str:
    text = "\n".join(plan)
    scans = re.findall(r"(?:Index Scan|Index Only Scan|Bitmap Index Scan|Seq Scan)(?: Backward)? (?:using|on) (\S+)",
                       text)
    removed = sum(int(float(x)) for x in re.findall(r"Rows Removed by Filter: ([\d.]+)", text))
    sort = "+sort" if "Sort Key" in text else ""
    return f"{'/'.join(s for s in scans if s != 'litetask_tasks_pkey')}{sort}, removed {removed:,}"


async def scenario(c: asyncpg.Connection, claim: str, n: int, label: str, results: dict[str, Any]) -> None:
    p50, p95, plan = await time_claims(c, claim, n)
    results[label] = (p50, p95, plan_gist(plan))
    log(f"    {label:3s} p50 {p50:8.2f} ms  p95 {p95:8.2f} ms  {plan_gist(plan)}")


async def run_alt(base_url: str, name: str, ddl: list[str], claim: str, args: argparse.Namespace,
                  made: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    admin = await asyncpg.connect(base_url)
    try:
        for tmpl, suffix in (("bench_alt_big", ""), ("bench_alt_empty", "_empty")):
            db = f"bench_alt_{name}{suffix}"
            made.append(db)
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{db}" TEMPLATE "{tmpl}"')
    finally:
        await admin.close()
    big_url = _with_database(base_url, f"bench_alt_{name}")
    empty_url = _with_database(base_url, f"bench_alt_{name}_empty")
    log(f"  {name}")

    c = await asyncpg.connect(big_url)
    try:
        for stmt in ddl:
            await c.execute(stmt)
        await c.execute("VACUUM (ANALYZE) litetask_tasks")
        await c.execute(INSERT_DUE, "a-", 2050, 0)
        await scenario(c, claim, args.claims, "A", res)
        await c.execute("ANALYZE litetask_tasks")
        await scenario(c, claim, args.claims, "B", res)
        if name == "promote":
            t0 = time.perf_counter()
            for _ in range(100):
                await c.execute(PROMOTE, 1000)
            res["promote_nothing_due_ms"] = (time.perf_counter() - t0) * 10
            log(f"    PROMOTE with nothing due: {res['promote_nothing_due_ms']:.3f} ms")
        await c.execute("DELETE FROM litetask_tasks WHERE name = 'bench_noop'")
        await c.execute(INSERT_DUE, "c-", 300_000, 0)
        await c.execute("VACUUM (ANALYZE) litetask_tasks")
        await scenario(c, claim, args.claims, "C", res)
        await c.execute("DELETE FROM litetask_tasks WHERE name = 'bench_noop'")
        await c.execute(INSERT_FUTURE_P1, 100_000)
        if name == "promote":
            await c.execute("UPDATE litetask_tasks SET scheduled = true WHERE status = 'pending' AND run_at > now() "
                            "AND NOT scheduled")
        await c.execute(INSERT_DUE, "p-", 2050, 0)
        await c.execute("VACUUM (ANALYZE) litetask_tasks")
        await scenario(c, claim, args.claims, "P", res)
    finally:
        await c.close()

    c = await asyncpg.connect(empty_url)
    try:
        for stmt in ddl:
            await c.execute(stmt)
        await c.execute(INSERT_DUE, "d-", 300_000, 0)
        await scenario(c, claim, args.claims, "D", res)
        await c.execute("VACUUM (ANALYZE) litetask_tasks")
        await scenario(c, claim, args.claims, "D'", res)
    finally:
        await c.close()
    return res


async def amain(args: argparse.Namespace) -> None:
    t_all = time.perf_counter()
    server = None
    if args.url:
        base_url = args.url
    else:
        base_url, server = get_postgres_url()
    made: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        for db, fill in (("bench_alt_big", True), ("bench_alt_empty", False)):
            made.append(db)
            url = await create_database_async(base_url, db)
            c = await asyncpg.connect(url)
            try:
                await migrate(c)
                await c.execute("ALTER TABLE litetask_tasks SET (autovacuum_enabled = false)")
                if fill:
                    log(f"filling: {args.finished:,} finished + {args.future:,} future ...")
                    await c.execute("SET synchronous_commit = off")
                    await c.execute(FILL_FINISHED, args.finished, FILL_NAME)
                    await c.execute(FILL_FUTURE, args.future, FILL_NAME)
                    await c.execute("VACUUM (ANALYZE) litetask_tasks")
            finally:
                await c.close()
        for name, (ddl, claim) in ALTERNATIVES.items():
            results[name] = await run_alt(base_url, name, ddl, claim, args, made)
    finally:
        if server is None:
            with contextlib.suppress(Exception):
                c = await asyncpg.connect(base_url)
                for db in made:
                    await c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                await c.close()
        else:
            server.cleanup()

    labels = ["A", "B", "C", "P", "D", "D'"]
    print(f"\nclaim of 10, p50 / p95 ms ({args.claims} claims); plan: index used, rows removed by filter\n")
    print("| alternative | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k][0]:.2f} / {r[k][1]:.2f}" for k in labels) + " |")
    print()
    for name, r in results.items():
        print(f"{name}: " + "; ".join(f"{k}: {r[k][2]}" for k in labels))
    if "promote" in results:
        print(f"\npromote: PROMOTE with nothing due {results['promote']['promote_nothing_due_ms']:.3f} ms")
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("LITETASK_TEST_POSTGRES_URL") or None)
    p.add_argument("--finished", type=int, default=1_000_000)
    p.add_argument("--future", type=int, default=200_000)
    p.add_argument("--claims", type=int, default=50)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
