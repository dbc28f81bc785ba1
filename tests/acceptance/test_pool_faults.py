"""Pool processes that die: under CPU load, beside large progress messages, and at shutdown.

Each task records one line per run, so "ran once" is checked, not assumed. CPU hogs occupy
every core beside the worker, so nothing here may depend on a process being quick.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from litetask_async import LiteTask, TaskStatus
from tests import jobs
from tests.acceptance.helpers import ROOT, effects, start_worker, stop_worker, wait_until
from tests.conftest import running_worker

pytestmark = pytest.mark.slow

HOG = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"


@pytest.fixture
def cpu_hogs() -> Iterator[None]:
    """One busy process per core, for the length of the test (and at most ten minutes)."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


@pytest.mark.anyio
@pytest.mark.usefixtures("cpu_hogs")
async def test_pool_crashes_and_timeouts_under_cpu_load_run_once(tmp_path: Path) -> None:
    """50 tasks that kill their own process, 50 that time out and 100 innocent ones, all in
    flight together on two pool processes while every core is busy: each runs exactly once, the
    crashed ones fail with their exit code, the timed-out ones with TaskTimeout."""
    app = LiteTask(f"sqlite:///{tmp_path / 'tasks.db'}")
    t = jobs.register(app)
    fx = tmp_path / "effects.txt"
    n = 50
    try:
        async with running_worker(app, processes=2, concurrency=6):
            crash, timeout, ok = [], [], []
            for i in range(n):
                crash.append(await t["effect_then_exit"].adelay(str(fx), i, 3))
                timeout.append(await t["effect_timeout_pool"].adelay(str(fx), n + i, 30))
                ok.append(await t["record_effect"].adelay(str(fx), 2 * n + 2 * i))
                ok.append(await t["arecord_effect"].adelay(str(fx), 2 * n + 2 * i + 1))
            recs = {i: await app.wait(i, 240) for i in crash + timeout + ok}
    finally:
        await app.aclose()
    for i in crash:
        r = recs[i]
        assert r.status is TaskStatus.FAILED and r.error is not None, r
        assert r.error["type"] == "ProcessDied" and "exited with code 3" in r.error["message"], r.error
        assert r.attempts == 1
    for i in timeout:
        r = recs[i]
        assert r.status is TaskStatus.FAILED and r.error is not None and r.error["type"] == "TaskTimeout", r
    assert all(recs[i].status is TaskStatus.COMPLETED for i in ok)
    seen = effects(fx)
    assert sorted(seen) == list(range(4 * n)), "every task ran"
    assert {k: c for k, c in seen.items() if c != 1} == {}, "no task ran twice"


def _produce(env: dict[str, str], code: str) -> list[str]:
    """Run ``code`` (which enqueues and prints ids) in a producer process; the ids."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True).stdout.split()


def _counts(app: LiteTask) -> dict[TaskStatus, int]:
    out: dict[TaskStatus, int] = {}
    for r in app.list_tasks_sync(limit=1000):
        out[r.status] = out.get(r.status, 0) + 1
    return out


@pytest.mark.anyio
async def test_a_task_cancelled_while_queued_behind_another_in_its_process_never_runs(tmp_path: Path) -> None:
    """A busy pool process holds the next job in its pipe. Cancelling that job does not kill
    the process (the task it runs goes on and completes): the child skips the job, whose side
    effect never happens; the process then runs the next task. A task behind one that times out
    (its process killed) runs once, in a new process."""
    app = LiteTask(f"sqlite:///{tmp_path / 'tasks.db'}")
    t = jobs.register(app)
    fx = tmp_path / "effects.txt"

    async def until_running(task_id: str) -> None:
        for _ in range(200):
            if (await app.get_task(task_id)).status is TaskStatus.RUNNING:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"task {task_id} did not start")

    try:
        async with running_worker(app, processes=1, concurrency=2):
            blocker = await t["sleep_pool"].adelay(1.5)
            await until_running(blocker)
            queued = await t["record_effect"].adelay(str(fx), 1)
            await until_running(queued)  # claimed: in the busy process's pipe
            assert await app.cancel(queued) is True
            assert (await app.wait(queued, 10)).status is TaskStatus.CANCELLED
            done = await app.wait(blocker, 10)
            assert done.status is TaskStatus.COMPLETED and done.result == "slept"
            after = await app.wait(await t["getpid"].adelay(), 10)
            assert after.result == done.pid, "the pool process was replaced"

            slow = await t["effect_timeout_pool"].adelay(str(fx), 2, 30)
            await until_running(slow)
            behind = await t["record_effect"].adelay(str(fx), 3)
            assert (await app.wait(slow, 20)).status is TaskStatus.FAILED
            assert (await app.wait(behind, 20)).status is TaskStatus.COMPLETED
    finally:
        await app.aclose()
    assert effects(fx) == {2: 1, 3: 1}


@pytest.mark.usefixtures("cpu_hogs")
@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_dying_pool_process_beside_large_progress_hangs_nothing(tmp_path: Path, how: str) -> None:
    """A pool process dies (exit or segfault) while another floods the worker with large
    progress messages: the worker finishes every other task, the dead one fails with its exit
    code, and SIGTERM stops the worker within its grace period."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    fx = tmp_path / "effects.txt"
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
    producer = f"""
from tests.xproc_app import big_progress, crash_after_effect, effect_async, effect_pool
path = {str(fx)!r}
ids = [big_progress.delay(path, 0, 4.0), big_progress.delay(path, 1, 4.0)]
ids += [crash_after_effect.delay(path, 2, {how!r}) for _ in range(1)]
ids += [big_progress.delay(path, 3, 2.0)]
ids += [effect_async.delay(path, 10 + i) for i in range(10)]
ids += [effect_pool.delay(path, 20 + i) for i in range(10)]
print(" ".join(ids))
"""
    worker = start_worker(url, tmp_path / "w.log", "--concurrency", "4", "--processes", "2")
    try:
        out = _produce(env, producer)
        app = LiteTask(url)
        try:
            wait_until(lambda: _counts(app).get(TaskStatus.RUNNING, 0) == 0
                       and _counts(app).get(TaskStatus.PENDING, 0) == 0, 120, "every task finished")
            recs = {i: app.get_task_sync(i) for i in out}
        finally:
            app.close()
        t0 = time.monotonic()
        code = stop_worker(worker, timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    log = (tmp_path / "w.log").read_text()
    crashed = recs[out[2]]
    assert crashed is not None and crashed.status is TaskStatus.FAILED and crashed.error is not None, log[-3000:]
    expected = "exited with code 3" if how == "exit" else "died from signal SIGSEGV"
    assert crashed.error["type"] == "ProcessDied" and expected in crashed.error["message"], crashed.error
    others = [recs[i] for i in out if i != out[2]]
    assert all(r is not None and r.status is TaskStatus.COMPLETED for r in others), [
        (r.name, r.status, r.error) for r in others if r is not None]
    seen = effects(fx)
    assert sorted(seen) == [0, 1, 2, 3, *range(10, 30)]
    assert {k: c for k, c in seen.items() if c != 1} == {}
    assert code == 0 and stopped_in < 5 + 5, (code, stopped_in, log[-3000:])


@pytest.mark.usefixtures("cpu_hogs")
def test_timeout_while_sending_progress_then_sigterm_stops_in_grace(tmp_path: Path) -> None:
    """A pool task killed by its timeout in the middle of sending progress leaves no lock behind:
    the worker goes on, and SIGTERM (with a long task still running) stops it within its grace
    period, putting that task back."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    fx = tmp_path / "effects.txt"
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
    producer = f"""
from tests.xproc_app import big_progress, big_progress_timeout, effect_pool
path = {str(fx)!r}
ids = [big_progress_timeout.delay(path, 0), big_progress_timeout.delay(path, 1)]
ids += [effect_pool.delay(path, 10 + i) for i in range(5)]
print(" ".join(ids))
"""
    worker = start_worker(url, tmp_path / "w.log", "--concurrency", "4", "--processes", "2")
    try:
        ids = _produce(env, producer)
        app = LiteTask(url)
        try:
            wait_until(lambda: all((r := app.get_task_sync(i)) is not None and r.is_final for i in ids),
                       120, "the first tasks finished")
            recs = [app.get_task_sync(i) for i in ids]
            [long] = _produce(env, "from tests.xproc_app import big_progress; "
                                   f"print(big_progress.delay({str(fx)!r}, 50, 60.0))")
            wait_until(lambda: (r := app.get_task_sync(long)) is not None and r.pid is not None
                       and r.status is TaskStatus.RUNNING, 60, "the long task running in a pool process")
            t0 = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(30)
            stopped_in = time.monotonic() - t0
            back = app.get_task_sync(long)
        finally:
            app.close()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    log = (tmp_path / "w.log").read_text()
    assert [r is not None and (r.status, r.error and r.error["type"]) for r in recs[:2]] == [
        (TaskStatus.FAILED, "TaskTimeout")] * 2, log[-3000:]
    assert all(r is not None and r.status is TaskStatus.COMPLETED for r in recs[2:])
    assert code == 0 and stopped_in < 5 + 5, (code, stopped_in, log[-3000:])
    assert back is not None and back.status is TaskStatus.PENDING  # put back for another worker


def test_sigterm_to_the_whole_process_group_lets_pool_tasks_finish(tmp_path: Path) -> None:
    """systemd's default KillMode sends SIGTERM to every process of the group: pool processes
    ignore it, so a running pool task finishes within the grace period instead of dying."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    fx = tmp_path / "effects.txt"
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "litetask_async.cli", "worker", "tests.xproc_app:app",
            "--concurrency", "2", "--processes", "1", "--grace-period", "20"]
    with (tmp_path / "w.log").open("ab") as out:
        worker = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    app = LiteTask(url)
    try:
        [task_id] = _produce(env, "from tests.xproc_app import slow_effect_pool; "
                                       f"print(slow_effect_pool.delay({str(fx)!r}, 1, 2.0))")
        wait_until(lambda: (r := app.get_task_sync(task_id)) is not None and r.pid is not None
                   and r.pid != worker.pid, 60, "the task running in a pool process")
        os.killpg(worker.pid, signal.SIGTERM)
        code = worker.wait(30)
        rec = app.get_task_sync(task_id)
    finally:
        app.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert code == 0, (tmp_path / "w.log").read_text()[-3000:]
    assert rec is not None and rec.status is TaskStatus.COMPLETED, rec
    assert effects(fx) == {1: 1}


BOOT_FAILS = """
import asyncio, contextlib, os, sys
from litetask_async import LiteTask

app = LiteTask(sys.argv[1])


@app.task
def square(x: int) -> int:
    return x * x


async def main() -> None:
    ids = [square.delay(i) for i in range(5)]
    worker = asyncio.create_task(app.run_worker(concurrency=5, processes=2))
    for tid in ids:
        rec = await app.wait(tid, 60)
        print(rec.status, rec.error["type"], rec.error["message"], flush=True)
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker


if __name__ == "__main__":
    # spawn re-runs this file in every pool process: without it, each one fails at start-up
    os.unlink(__file__)
    asyncio.run(main())
"""


def test_pool_processes_failing_at_start_up_fail_the_tasks_instead_of_looping(tmp_path: Path) -> None:
    script = tmp_path / "boot_fails.py"
    script.write_text(BOOT_FAILS)
    out = subprocess.run([sys.executable, str(script), f"sqlite:///{tmp_path / 'tasks.db'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 5, out.stdout
    for line in lines:
        assert line.startswith("failed ProcessDied") and "before starting any task" in line, line
    assert "FileNotFoundError" in out.stderr  # the pool processes' own report, in the worker's log
