"""Real processes on one SQLite file: a producer, two workers, SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.helpers import ROOT, effect_pids, effects, start_worker, stop_worker, wait_until

pytestmark = pytest.mark.slow

N = 2000

PRODUCER = """
import sys
from tests.xproc_app import effect_async, effect_pool
path, n = sys.argv[1], int(sys.argv[2])
half = n // 2
for i in range(0, half, 2):                       # one by one, from sync code
    effect_async.delay(path, i)
    effect_pool.delay(path, i + 1)
calls = [((path, i), {}) for i in range(half, n)]
for k in range(0, len(calls), 100):               # and in batches
    effect_async.delay_many(calls[k:k + 100])
print("produced", n)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:  # a zombie is as good as gone
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM litetask_tasks GROUP BY status").fetchall())


def test_producer_and_two_workers_run_each_task_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    fx = tmp_path / "effects.txt"
    workers = [start_worker(url, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
        prod = subprocess.run([sys.executable, "-c", PRODUCER, str(fx), str(N)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert prod.returncode == 0, prod.stderr
        wait_until(lambda: counts(db).get("completed", 0) == N, 240, f"{N} completed tasks")
    finally:
        codes = [stop_worker(w) for w in workers]
    assert codes == [0, 0], [(tmp_path / f"w{i}.log").read_text()[-3000:] for i in range(2)]
    assert counts(db) == {"completed": N}
    seen = effects(fx)
    assert sorted(seen) == list(range(N))
    dupes = {n: c for n, c in seen.items() if c != 1}
    assert not dupes, f"tasks whose side effect happened more than once: {dupes}"
    with sqlite3.connect(db) as conn:
        workers_used = {r[0] for r in conn.execute("SELECT DISTINCT worker_id FROM litetask_tasks")}
        attempts = {r[0] for r in conn.execute("SELECT DISTINCT attempts FROM litetask_tasks")}
    assert len(workers_used) == 2, "both workers should have taken part"
    assert attempts == {1}


@pytest.mark.parametrize("kind", ["async", "pool"])
def test_sigkilled_worker_task_is_completed_by_the_other(tmp_path: Path, kind: str) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    fx = tmp_path / "effects.txt"
    w1 = start_worker(url, tmp_path / "w1.log")
    w2: subprocess.Popen[bytes] | None = None
    try:
        env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
        code = (f"from tests.xproc_app import slow_effect_{kind} as t; import sys; "
                f"print(t.delay(sys.argv[1], 7, 4.0))")
        out = subprocess.run([sys.executable, "-c", code, str(fx)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=True)
        task_id = out.stdout.strip()

        def row() -> tuple[str, str | None, int, int]:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT status, worker_id, attempts, pid FROM litetask_tasks WHERE id = ?",
                                    (task_id,)).fetchone()

        wait_until(lambda: row()[0] == "running", 60, "the task to start on worker 1")
        assert row()[1] is not None and f":{w1.pid}:" in row()[1]
        if kind == "pool":
            wait_until(lambda: row()[3] != w1.pid, 30, "the pool process's pid to be recorded")
        runner_pid = row()[3]
        w2 = start_worker(url, tmp_path / "w2.log")
        os.kill(w1.pid, signal.SIGKILL)
        w1.wait(10)
        # the pool process running the task dies with its worker instead of finishing the task
        wait_until(lambda: not _alive(runner_pid), 10, "the orphaned pool process to exit")
        wait_until(lambda: row()[0] == "completed", 90, "the other worker to complete the task")
        _status, worker_id, attempts, pid = row()
        assert worker_id is not None and f":{w2.pid}:" in worker_id
        assert attempts == 2
        # the killed worker never finished it: exactly one side effect, by the survivor
        assert effects(fx)[7] == 1 and effect_pids(fx)[7] == {pid}
        if kind == "async":
            assert pid == w2.pid
    finally:
        if w1.poll() is None:
            w1.kill()
        if w2 is not None:
            assert stop_worker(w2) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_worker_cleanly_and_puts_back_unfinished(tmp_path: Path, sig: int) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    fx = tmp_path / "effects.txt"
    w = start_worker(url, tmp_path / "w.log", "--grace-period", "1")
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
    code = ("from tests.xproc_app import slow_effect_async as a, slow_effect_pool as p, effect_async as q; "
            "import sys; print(a.delay(sys.argv[1], 1, 60.0)); print(p.delay(sys.argv[1], 2, 60.0)); "
            "print(q.delay(sys.argv[1], 3))")
    out = subprocess.run([sys.executable, "-c", code, str(fx)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    slow_a, slow_p, quick = out.stdout.split()

    def status(tid: str) -> tuple[str, int]:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT status, attempts FROM litetask_tasks WHERE id = ?", (tid,)).fetchone()

    wait_until(lambda: status(slow_a)[0] == status(slow_p)[0] == "running" and status(quick)[0] == "completed",
               60, "tasks to start")
    w.send_signal(sig)
    assert w.wait(30) == 0, (tmp_path / "w.log").read_text()[-3000:]
    assert status(slow_a)[0] == "pending" and status(slow_p)[0] == "pending"
    assert effects(fx) == {3: 1}  # the interrupted tasks did not finish, the quick one did once
