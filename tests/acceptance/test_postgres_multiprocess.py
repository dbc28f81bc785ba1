"""Real worker processes against a real PostgreSQL: four workers, 10,000 tasks; SIGKILL;
transactional enqueue."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from litetask_async import LiteTask, TaskStatus
from litetask_async.brokers.postgres import asyncpg_dsn, sqlalchemy_url
from tests.acceptance.helpers import ROOT, effect_pids, effects, start_worker, stop_worker, wait_until

pytestmark = pytest.mark.slow

N = 10_000

PRODUCER = """
import sys
from tests.xproc_app import effect_async, effect_pool
path, n = sys.argv[1], int(sys.argv[2])
for i in range(0, 200, 2):                       # some one by one, from sync code
    effect_async.delay(path, i)
    effect_pool.delay(path, i + 1)
calls = [((path, i), {}) for i in range(200, n)]
for k in range(0, len(calls), 500):               # the rest in batches
    effect_async.delay_many(calls[k:k + 500])
print("produced", n)
"""


def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def status_counts(url: str) -> dict[str, int]:
    return {r[0]: r[1] for r in query(url, "SELECT status, count(*) FROM litetask_tasks GROUP BY status")}


def test_four_workers_run_10000_tasks_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    fx = tmp_path / "effects.txt"
    asyncio.run(LiteTask(postgres_url).migrate())
    workers = [start_worker(postgres_url, tmp_path / f"w{i}.log") for i in range(4)]
    try:
        env = {**os.environ, "LITETASK_URL": postgres_url, "PYTHONPATH": str(ROOT)}
        prod = subprocess.run([sys.executable, "-c", PRODUCER, str(fx), str(N)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert prod.returncode == 0, prod.stderr
        wait_until(lambda: status_counts(postgres_url).get("completed", 0) == N, 300, f"{N} completed")
    finally:
        codes = [stop_worker(w) for w in workers]
    assert codes == [0, 0, 0, 0], [(tmp_path / f"w{i}.log").read_text()[-3000:] for i in range(4)]
    assert status_counts(postgres_url) == {"completed": N}
    seen = effects(fx)
    assert sorted(seen) == list(range(N)), "every task's side effect happened"
    dupes = {n: c for n, c in seen.items() if c != 1}
    assert not dupes, f"side effects that happened more than once (double claims): {dupes}"
    rows = query(postgres_url, "SELECT count(DISTINCT worker_id), max(attempts) FROM litetask_tasks")
    assert rows[0][0] >= 2, "several workers should have taken part"
    assert rows[0][1] == 1


def test_sigkilled_worker_task_is_completed_by_another(tmp_path: Path, postgres_url: str) -> None:
    fx = tmp_path / "effects.txt"
    asyncio.run(LiteTask(postgres_url).migrate())
    w1 = start_worker(postgres_url, tmp_path / "w1.log")
    w2: subprocess.Popen[bytes] | None = None
    try:
        app = LiteTask(postgres_url)
        from tests.xproc_app import slow_effect_async

        task = app.task(slow_effect_async.fn, name=slow_effect_async.name)
        task_id = task.delay(str(fx), 7, 4.0)

        def row() -> asyncpg.Record:
            return query(postgres_url, "SELECT status, worker_id, attempts FROM litetask_tasks WHERE id = $1",
                         task_id)[0]

        wait_until(lambda: row()["status"] == "running", 60, "the task to start on worker 1")
        assert f":{w1.pid}:" in row()["worker_id"]
        w2 = start_worker(postgres_url, tmp_path / "w2.log")
        os.kill(w1.pid, signal.SIGKILL)
        w1.wait(10)
        wait_until(lambda: row()["status"] == "completed", 90, "another worker to complete the task")
        r = row()
        assert f":{w2.pid}:" in r["worker_id"] and r["attempts"] == 2
        assert effects(fx)[7] == 1 and effect_pids(fx)[7] == {w2.pid}
        app.close()
    finally:
        if w1.poll() is None:
            w1.kill()
        if w2 is not None:
            assert stop_worker(w2) == 0


def test_transactional_enqueue(postgres_url: str) -> None:
    async def run() -> None:
        app = LiteTask(postgres_url)
        from tests import jobs

        t = jobs.register(app)
        await app.migrate()
        engine = create_async_engine(sqlalchemy_url(postgres_url))
        # rolled back: no task
        async with engine.connect() as conn:
            trans = await conn.begin()
            rolled = await t["aadd"].adelay(1, 2, connection=conn)
            many = await t["aadd"].adelay_many([((3, 4), {})], connection=conn)
            await trans.rollback()
        assert await app.get_task(rolled) is None and await app.get_task(many[0]) is None
        # committed: invisible until commit, then run by a worker
        from tests.conftest import running_worker

        async with running_worker(app):
            async with engine.begin() as conn:
                committed = await t["aadd"].adelay(20, 22, connection=conn)
                await asyncio.sleep(0.5)
                assert await app.get_task(committed) is None  # not visible before commit
            rec = await app.wait(committed, 20)
        assert rec.status is TaskStatus.COMPLETED and rec.result == 42
        await engine.dispose()
        await app.aclose()

    asyncio.run(run())
