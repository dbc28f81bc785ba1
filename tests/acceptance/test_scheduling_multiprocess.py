"""Scheduling across real processes, on SQLite and PostgreSQL: a 20-process unique-key race,
max_concurrency held across three workers, a periodic task with three workers, priorities."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.helpers import ROOT, start_worker, stop_worker, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("postgres_url"))


def run_py(url: str, code: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_ok(url: str, code: str, *args: str) -> str:
    p = run_py(url, code, *args)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return out


def migrate(url: str) -> None:
    run_ok(url, "import asyncio; from tests.xproc_app import app; asyncio.run(app.migrate())")


def count_tasks(url: str, name: str) -> int:
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.split(":///", 1)[1]) as conn:
            return int(conn.execute("SELECT count(*) FROM litetask_tasks WHERE name = ?", (name,)).fetchone()[0])
    from tests.acceptance.test_postgres_multiprocess import query

    return int(query(url, "SELECT count(*) FROM litetask_tasks WHERE name = $1", name)[0][0])


RACE = """
import sys, time
from tests.xproc_app import effect_async
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
print(effect_async.configure(unique_key="welcome:42").delay("/dev/null", 42))
"""


def test_twenty_processes_race_on_one_unique_key(url: str) -> None:
    migrate(url)
    start = time.time() + 3.0  # let all 20 interpreters start, then go at once
    procs = [run_py(url, RACE, str(start)) for _ in range(20)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert len(set(outs)) == 1, "every process got the id of the one task"
    assert count_tasks(url, "tests.xproc_app.effect_async") == 1


def test_max_concurrency_two_across_three_workers(url: str, tmp_path: Path) -> None:
    migrate(url)
    fx = tmp_path / "intervals.txt"
    run_ok(url, "import sys\nfrom tests.xproc_app import limited_interval as t\n"
                "t.delay_many([((sys.argv[1], i, 0.3), {}) for i in range(12)])", str(fx))
    workers = [start_worker(url, tmp_path / f"w{i}.log") for i in range(3)]
    try:
        wait_until(lambda: fx.exists() and len(fx.read_text().splitlines()) == 12, 120, "12 limited tasks")
    finally:
        assert [stop_worker(w) for w in workers] == [0, 0, 0]
    intervals = [tuple(map(float, line.split()[1:])) for line in fx.read_text().splitlines()]
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2, f"at most 2 at once, and the limit was used: peak {peak}"


def test_periodic_every_second_three_workers_once_per_tick(url: str, tmp_path: Path) -> None:
    migrate(url)
    fx = tmp_path / "ticks.txt"
    env = {"LITETASK_TEST_PERIODIC": str(fx)}
    workers = [start_worker(url, tmp_path / f"w{i}.log", env=env) for i in range(3)]
    time.sleep(6.5)
    assert [stop_worker(w) for w in workers] == [0, 0, 0]
    ticks = [int(line.split()[0]) for line in fx.read_text().splitlines()]
    assert len(ticks) == len(set(ticks)), f"a tick ran twice: {sorted(ticks)}"
    assert 4 <= len(ticks) <= 7, sorted(ticks)
    assert sorted(ticks) == list(range(min(ticks), max(ticks) + 1)), "no tick was skipped"


def test_priorities_with_one_worker_at_concurrency_one(url: str, tmp_path: Path) -> None:
    migrate(url)
    fx = tmp_path / "order.txt"
    code = ("import sys\nfrom tests.xproc_app import record_order as t\n"
            "for prio, label in [(0, 'low-1'), (10, 'high-1'), (0, 'low-2'), (5, 'mid'), (10, 'high-2')]:\n"
            "    t.configure(priority=prio).delay(sys.argv[1], label)\n")
    run_ok(url, code, str(fx))
    w = start_worker(url, tmp_path / "w.log", "--concurrency", "1")
    try:
        wait_until(lambda: fx.exists() and len(fx.read_text().splitlines()) == 5, 60, "5 tasks")
    finally:
        assert stop_worker(w) == 0
    assert fx.read_text().split() == ["high-1", "high-2", "mid", "low-1", "low-2"]


@pytest.mark.parametrize("kind", ["async", "pool"])
def test_cancel_from_another_process_stops_a_running_task_quickly(url: str, tmp_path: Path, kind: str) -> None:
    migrate(url)
    fx = tmp_path / "effects.txt"
    task_id = run_ok(url, f"import sys\nfrom tests.xproc_app import slow_effect_{kind} as t\n"
                          "print(t.delay(sys.argv[1], 1, 60.0))", str(fx)).strip()
    w = start_worker(url, tmp_path / "w.log")
    try:
        status = "import sys\nfrom tests.xproc_app import app\nprint(app.get_task_sync(sys.argv[1]).status)"
        wait_until(lambda: run_ok(url, status, task_id).strip() == "running", 60, "the task to run")
        time.sleep(0.5)
        t0 = time.monotonic()
        out = run_ok(url, "import sys, time\nfrom tests.xproc_app import app\n"
                          "assert app.cancel_sync(sys.argv[1])\n"
                          "rec = app.wait_sync(sys.argv[1], timeout=10)\nprint(rec.status)", task_id)
        elapsed = time.monotonic() - t0
    finally:
        assert stop_worker(w) == 0
    assert out.strip() == "cancelled"
    assert elapsed < 2.0 + 1.5, elapsed  # within a second or two, plus interpreter start-up
    assert not fx.exists()  # the work really stopped
