"""Where the server's time goes, per statement, when one worker processes a backlog.

NOTE (a diagnostic, not used by the README's tables): run against schema 6 (one table, eleven
indexes) and schema 7 (litetask_queue + litetask_done), on PostgreSQL 15 with fsync on, it showed
that the claim and the finish UPDATEs wrote ~9 index entries each per task, and that with a
backlog the claim was planned as "every due row through litetask_tasks_due, then sort" (the
statistics of a table whose size swings are always stale): 117 ms per claim with 486,000 due
rows. benchmarks/README.md has the figures.

    python benchmarks/notes/pg_statement_costs.py --url postgresql://postgres@127.0.0.1:5432/postgres
                                                  [--n 5000] [--backlog 0]

Needs pg_stat_statements in shared_preload_libraries (``ALTER SYSTEM SET
shared_preload_libraries = 'pg_stat_statements'`` and a restart). Creates the database
``bench_stmt_costs``, enqueues ``--backlog`` + ``--n`` no-op tasks, resets the statement
statistics, lets one worker subprocess (concurrency 10) process ``--n`` of them, and prints per
statement: calls, rows, total and mean time, blocks dirtied, WAL records, full-page images and
WAL bytes, per processed task.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import _pg_adapters as A  # noqa: E402
import asyncpg  # noqa: E402
from bench_postgres import WorkerProc  # noqa: E402

from tests.pg_server import create_database_async  # noqa: E402

STATS = """
SELECT calls, rows, total_exec_time, shared_blks_dirtied, wal_records, wal_fpi, wal_bytes,
       regexp_replace(left(query, 400), '\\s+', ' ', 'g') AS query
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC LIMIT 12
"""


async def main(args: argparse.Namespace) -> None:
    url = await create_database_async(args.url, "bench_stmt_costs")
    prod = A.PRODUCERS["litetask"](url)
    await prod.open()
    for i in range(0, args.backlog + args.n, 10_000):
        await prod.enqueue_batch(min(10_000, args.backlog + args.n - i))
    mon = await asyncpg.connect(url)
    await mon.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    await mon.execute("CHECKPOINT")
    w = WorkerProc("litetask", url, 10, {}, "asyncio")
    await w.start()
    await mon.execute("SELECT pg_stat_statements_reset()")
    t0 = time.perf_counter()
    w.go()
    while await prod.remaining() > args.backlog:
        await asyncio.sleep(0.05)
    dt = time.perf_counter() - t0
    await w.stop()
    done = args.backlog + args.n - await prod.remaining()
    print(f"{done} tasks in {dt:.2f}s = {done / dt:,.0f}/s; per task:")
    print(f"{'calls':>7} {'rows':>7} {'ms total':>9} {'us/task':>8} {'dirtied':>8} {'WAL rec':>8} {'FPI':>6} "
          f"{'WAL B':>7}  statement")
    for r in await mon.fetch(STATS):
        print(f"{r['calls']:7d} {r['rows']:7d} {r['total_exec_time']:9.1f} {1000 * r['total_exec_time'] / done:8.1f} "
              f"{r['shared_blks_dirtied'] / done:8.2f} {r['wal_records'] / done:8.2f} {r['wal_fpi'] / done:6.2f} "
              f"{int(r['wal_bytes']) / done:7.0f}  {r['query'][:150]}")
    await mon.close()
    await prod.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--backlog", type=int, default=0)
    asyncio.run(main(p.parse_args()))
