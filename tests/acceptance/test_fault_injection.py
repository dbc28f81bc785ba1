"""Fault injection with real processes: random SIGKILLs of workers and of pool processes while
2,000 tasks with side effects run; on PostgreSQL the server is also restarted mid-run.

Checked: every task ends in exactly one final state; every completed task's side effect happened
at least once; duplicates (at-least-once re-runs) are counted, reported, and bounded by what the
kills can explain.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.acceptance.helpers import ROOT, effects, start_worker, stop_worker
from tests.acceptance.test_postgres_multiprocess import query
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.slow

N = 2000
WORKERS = 3
KILLS = 6
CONCURRENCY = 10

PRODUCER = """
import random, sys
from tests.xproc_app import chaos_async, chaos_pool
path, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
for k in range(0, n, 100):                        # pool and async tasks interleaved
    chunk = [((path, i, rnd.uniform(0.05, 0.25)), {}) for i in range(k, min(k + 100, n))]
    chaos_pool.delay_many([c for c in chunk if c[0][1] % 5 == 0])
    chaos_async.delay_many([c for c in chunk if c[0][1] % 5 != 0])
"""


def _pool_processes(pid: int) -> list[int]:
    """The worker's pool processes (its children, less multiprocessing's resource tracker)."""
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
        for kid in kids:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                if b"resource_tracker" not in f.read():
                    out.append(kid)
    except OSError:
        pass
    return out


def _run_chaos(url: str, tmp_path: Path, rows: Callable[[], list[tuple[str, str, int, str | None]]],
               outage: Callable[[], None] | None = None) -> None:
    fx = tmp_path / "effects.txt"
    rnd = random.Random(1234)
    extra = ("--heartbeat-timeout", "2", "--concurrency", str(CONCURRENCY), "--max-rescues", "5")
    workers = [start_worker(url, tmp_path / f"w{i}.log", *extra) for i in range(WORKERS)]
    started = len(workers)
    killed_workers = killed_pool = 0
    try:
        env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
        prod = subprocess.run([sys.executable, "-c", PRODUCER, str(fx), str(N)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert prod.returncode == 0, prod.stderr
        deadline = time.monotonic() + 300
        did_outage = outage is None
        while True:
            final = sum(1 for r in rows() if r[1] in ("completed", "failed", "cancelled"))
            if final == N:
                break
            assert time.monotonic() < deadline, f"only {final} of {N} tasks final"
            time.sleep(rnd.uniform(0.4, 1.0))
            if killed_workers < KILLS:
                victim = workers.pop(rnd.randrange(len(workers)))
                if rnd.random() < 0.5 and (kids := _pool_processes(victim.pid)):
                    # kill one of its pool processes instead (and keep the worker)
                    os.kill(rnd.choice(kids), signal.SIGKILL)
                    killed_pool += 1
                    workers.append(victim)
                else:
                    victim.kill()
                    victim.wait(10)
                    killed_workers += 1
                    workers.append(start_worker(url, tmp_path / f"w{started}.log", *extra))
                    started += 1
            if not did_outage and killed_workers >= 2:
                assert outage is not None
                outage()
                did_outage = True
    finally:
        codes = [stop_worker(w) for w in workers]
    assert codes == [0] * len(workers)
    assert did_outage, "the run ended before the database restart"

    final_rows = rows()
    assert len(final_rows) == N and len({r[0] for r in final_rows}) == N
    statuses = [r[1] for r in final_rows]
    assert all(s in ("completed", "failed") for s in statuses), set(statuses)
    seen = effects(fx)
    completed = {r[2] for r in final_rows if r[1] == "completed"}
    assert all(seen[n] >= 1 for n in completed), "a completed task's side effect is missing"
    failed = [r for r in final_rows if r[1] == "failed"]
    assert all(r[3] in ("WorkerLost", "ProcessDied") for r in failed), {r[3] for r in failed}
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    report = (f"{N} tasks: {len(completed)} completed, {len(failed)} failed (worker or process lost "
              f"too often); {killed_workers} workers and {killed_pool} pool processes SIGKILLed; "
              f"{duplicates} duplicate side effects (at-least-once re-runs)"
              + ("; the database was restarted mid-run" if outage is not None else ""))
    print(report)
    (tmp_path / "report.txt").write_text(report + "\n")
    # each kill can at most re-run what that process had in flight
    assert duplicates <= (killed_workers + killed_pool) * CONCURRENCY


def test_chaos_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "chaos.db"
    url = f"sqlite:///{db}"

    def rows() -> list[tuple[str, str, int, str | None]]:
        if not db.exists():
            return []
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute(
                "SELECT id, status, json_extract(args, '$[1]'), json_extract(error, '$.type') "
                "FROM litetask_tasks").fetchall()

    _run_chaos(url, tmp_path, rows)


def test_chaos_postgres_with_restart(tmp_path: Path, postgres_url: str,
                                     postgres_server: PostgresServer | None) -> None:
    def rows() -> list[tuple[str, str, int, str | None]]:
        try:
            return [tuple(r) for r in query(  # type: ignore[misc]
                postgres_url, "SELECT id, status, (args->>1)::int, error->>'type' FROM litetask_tasks")]
        except Exception:
            return []  # the server is down right now

    def outage() -> None:
        if postgres_server is not None:
            postgres_server.stop("fast")
            time.sleep(2)
            postgres_server.start()

    _run_chaos(postgres_url, tmp_path, rows, outage if postgres_server is not None else None)
