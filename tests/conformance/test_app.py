"""End-to-end behaviour through the app and a real worker (with its process pool), every broker."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import threading
from pathlib import Path

import pytest

from litetask_async import LiteTask, SerializationError, TaskNotFound, TaskStatus
from litetask_async.records import NewTask
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_async_and_pool_tasks_complete(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        a = await t["aadd"].adelay(2, 3)
        s = await t["add"].adelay(4, b=5)
        pa, pp = await t["agetpid"].adelay(), await t["getpid"].adelay()
        ra, rs = await app.wait(a, 20), await app.wait(s, 20)
        rpa, rpp = await app.wait(pa, 20), await app.wait(pp, 20)
    assert ra.status is TaskStatus.COMPLETED and ra.result == 5 and ra.attempts == 1
    assert rs.status is TaskStatus.COMPLETED and rs.result == 9 and rs.kwargs == {"b": 5}
    assert rpa.result == os.getpid() and rpa.pid == os.getpid()  # async: on the worker's loop
    assert rpp.result != os.getpid() and rpp.pid == rpp.result  # sync: in a pool process
    assert rs.started_at is not None and rs.finished_at is not None
    assert rs.created_at <= rs.started_at <= rs.finished_at


async def test_models_in_and_out(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        i1 = await t["add_models"].adelay(jobs.AddInput(a=2, b=3))
        i2 = await t["aadd_pydantic"].adelay(jobs.PAddInput(a=4, b=5))
        i3 = await t["norm"].adelay(jobs.AsDictPoint(3, 4))
        r1, r2, r3 = [await app.wait(i, 20) for i in (i1, i2, i3)]
    assert r1.args == [{"a": 2, "b": 3}] and r1.result == {"sum": 5}
    assert jobs.AddOutput(**r1.result) == jobs.AddOutput(5)
    assert r2.result == {"sum": 9}
    assert r3.result == {"norm2": 25, "point": {"x": 3, "y": 4}}


async def test_progress_from_async_and_pool(app: LiteTask) -> None:
    t = jobs.register(app)

    async def watch(tid: str) -> set[int]:
        seen = set()
        while True:
            rec = await app.get_task(tid)
            assert rec is not None
            seen.add(rec.progress)
            if rec.is_final:
                assert rec.status is TaskStatus.COMPLETED and rec.progress == 100
                return seen
            await asyncio.sleep(0.05)

    async with running_worker(app):
        ids = [await t["progress_pool"].adelay(5, 0.3), await t["progress_async"].adelay(steps=5, pause=0.3)]
        seen_sets = await asyncio.gather(*(watch(i) for i in ids))
    for seen in seen_sets:
        assert len({p for p in seen if 0 < p < 100}) >= 2, seen  # it moved while running


async def test_unserialisable_arguments_raise_and_store_nothing(app: LiteTask) -> None:
    t = jobs.register(app)
    with pytest.raises(SerializationError, match=re.escape("arguments of task 'tests.jobs.add'")):
        await t["add"].adelay(object(), 1)
    with pytest.raises(TypeError):  # SerializationError is a TypeError
        t["add"].delay(1, {1, 2})
    with pytest.raises(TypeError, match="bad arguments"):
        await t["add"].adelay(1)  # missing b
    with pytest.raises(SerializationError):
        await t["add"].adelay_many([((1, 2), {}), ((float("nan"), 2), {})])
    b = await app.broker()
    assert await b.claim("w", 1, 100) == []  # nothing was written


async def test_failures_are_recorded_with_traceback(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        ids = [await t["fail_pool"].adelay("pool boom"), await t["fail_async"].adelay("async boom")]
        recs = [await app.wait(i, 20) for i in ids]
    for rec, msg in zip(recs, ["pool boom", "async boom"], strict=True):
        assert rec.status is TaskStatus.FAILED and rec.error is not None
        assert rec.error["type"] == "ValueError" and rec.error["message"] == msg
        assert "Traceback" in rec.error["traceback"] and "raise ValueError" in rec.error["traceback"]


async def test_unserialisable_result_fails_clearly(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        ids = [await t["unserialisable_result"].adelay(), await t["aunserialisable_result"].adelay()]
        recs = [await app.wait(i, 20) for i in ids]
    for rec in recs:
        assert rec.status is TaskStatus.FAILED
        assert rec.error is not None and rec.error["type"] == "SerializationError"
        assert "result of task" in rec.error["message"]


async def test_unknown_task_name_fails_clearly(app: LiteTask) -> None:
    jobs.register(app)
    async with running_worker(app):
        tid = await app.aenqueue("reports.nobody_knows_me", 1)
        rec = await app.wait(tid, 20)
    assert rec.status is TaskStatus.FAILED and rec.error is not None
    assert rec.error["type"] == "UnknownTask" and "reports.nobody_knows_me" in rec.error["message"]


async def test_undecodable_payload_fails_only_that_task(app: LiteTask) -> None:
    t = jobs.register(app)
    b = await app.broker()
    bad = [
        # valid JSON of the wrong shape (PostgreSQL's jsonb columns refuse anything else)
        NewTask(id="bad-shape", name="tests.jobs.aadd", args_json='{"not": "a list"}', kwargs_json="{}"),
        NewTask(id="bad-args", name="tests.jobs.aadd", args_json="[1, 2, 3, 4]", kwargs_json="{}"),
    ]
    if not app.url.startswith("postgresql"):
        bad.append(NewTask(id="bad-json", name="tests.jobs.aadd", args_json="{not json", kwargs_json="{}"))
    await b.enqueue(bad)
    async with running_worker(app):
        good = await t["aadd"].adelay(1, 1)
        rbad = [await app.wait(n.id, 20) for n in bad]
        rgood = await app.wait(good, 20)
    for r in rbad:
        assert r.status is TaskStatus.FAILED and r.error is not None
        assert r.error["type"] == "PayloadError", r.error
    assert rgood.status is TaskStatus.COMPLETED


async def test_retries_then_success_with_error_history(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        tid = await t["flaky_async"].adelay(f"k-{app.url}", 2)
        rec = await app.wait(tid, 20)
    assert rec.status is TaskStatus.COMPLETED and rec.result == 3 and rec.attempts == 3
    assert [e["attempt"] for e in rec.errors] == [1, 2]
    assert [e["message"] for e in rec.errors] == ["flaky failure 1", "flaky failure 2"]
    assert all(e["type"] == "ConnectionError" and e["at"] for e in rec.errors)


async def test_retries_run_out_and_retry_on_filters(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        out = await app.wait(await t["flaky_async"].adelay(f"out-{app.url}", 10), 20)
        other = await app.wait(await t["only_conn_errors"].adelay("a ValueError"), 20)
    assert out.status is TaskStatus.FAILED and out.attempts == 4 and len(out.errors) == 4
    assert out.error is not None and out.error["message"] == "flaky failure 4"  # the last error
    assert other.status is TaskStatus.FAILED and other.attempts == 1  # not a retry_on type


async def test_retry_exception_with_its_own_delay(app: LiteTask, tmp_path: Path) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        # retry_backoff is 30 s: finishing fast proves the Retry's own 0.05 s delay was used
        p = await app.wait(await t["retry_me_pool"].adelay(str(tmp_path / "count"), 2), 20)
        a = await app.wait(await t["retry_me_async"].adelay(f"r-{app.url}", 2), 20)
        gave_up = await app.wait(await t["retry_me_async"].adelay(f"r2-{app.url}", 5), 20)
    for rec in (p, a):
        assert rec.status is TaskStatus.COMPLETED and rec.result == 3 and rec.attempts == 3
        assert [e["type"] for e in rec.errors] == ["Retry", "Retry"]
        assert rec.errors[0]["message"] == "not yet (1)"
    assert gave_up.status is TaskStatus.FAILED and gave_up.attempts == 3


async def test_timeouts_stop_async_and_pool_tasks(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        tp = await t["timeout_pool"].adelay(30)
        ta = await t["timeout_async"].adelay(30)
        ok = await t["sleep_pool"].adelay(1.0)  # in flight while the pool is rebuilt
        rp, ra, rok = await app.wait(tp, 20), await app.wait(ta, 20), await app.wait(ok, 20)
    assert rp.status is TaskStatus.FAILED and rp.error is not None and rp.error["type"] == "TaskTimeout"
    assert ra.status is TaskStatus.FAILED and ra.error is not None and ra.error["type"] == "TaskTimeout"
    assert rok.status is TaskStatus.COMPLETED and rok.result == "slept"
    assert rp.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(rp.pid, 0)  # the timed-out process is gone


async def test_crashed_pool_process_fails_its_task_only(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        crash = await t["crash_pool"].adelay(3)
        ok = await t["sleep_pool"].adelay(1.0)
        rc, rok = await app.wait(crash, 20), await app.wait(ok, 20)
    assert rc.status is TaskStatus.FAILED and rc.error is not None
    assert rc.error["type"] == "ProcessDied" and "code 3" in rc.error["message"]
    assert rok.status is TaskStatus.COMPLETED


async def test_cancel_pending_and_running(app: LiteTask) -> None:
    t = jobs.register(app)
    pending = await t["aadd"].adelay(1, 2)
    assert await app.cancel(pending) is True
    async with running_worker(app):
        ra = await t["sleep_async"].adelay(30)
        rp = await t["sleep_pool"].adelay(30)
        for tid in (ra, rp):
            while (rec := await app.get_task(tid)) is not None and rec.status is not TaskStatus.RUNNING:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let the pool process start the task
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await app.cancel(ra) is True and await app.cancel(rp) is True
        reca, recp = await app.wait(ra, 10), await app.wait(rp, 10)
        elapsed = loop.time() - t0
    assert reca.status is TaskStatus.CANCELLED and recp.status is TaskStatus.CANCELLED
    assert elapsed < 5
    recn = await app.get_task(pending)
    assert recn is not None and recn.status is TaskStatus.CANCELLED and recn.started_at is None
    assert await app.cancel(ra) is False  # already final
    with pytest.raises(TaskNotFound):
        await app.cancel("does-not-exist")


async def test_graceful_shutdown_puts_back_unfinished(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app, grace_period=0.5):
        quick = await t["sleep_async"].adelay(0.1)
        slow = await t["sleep_async"].adelay(30)
        slow_pool = await t["sleep_pool"].adelay(30)
        await asyncio.sleep(1.0)
    rq, rs, rp = [await app.get_task(i) for i in (quick, slow, slow_pool)]
    assert rq is not None and rq.status is TaskStatus.COMPLETED
    for rec in (rs, rp):
        assert rec is not None and rec.status is TaskStatus.PENDING and rec.worker_id is None
    # taken up again by the next worker
    async with running_worker(app):
        await asyncio.sleep(0.2)
        rec = await app.get_task(slow)
        assert rec is not None and rec.status is TaskStatus.RUNNING and rec.attempts == 2
        await app.cancel(slow)
        await app.cancel(slow_pool)
        assert (await app.wait(slow, 10)).status is TaskStatus.CANCELLED


async def test_stalled_worker_tasks_are_taken_up(app: LiteTask) -> None:
    t = jobs.register(app)
    tid = await t["aadd"].adelay(20, 22)
    b = await app.broker()
    (claimed,) = await b.claim("a-worker-that-died", 1, 1)
    assert claimed.id == tid
    async with running_worker(app, heartbeat_interval=0.1, heartbeat_timeout=0.5):
        rec = await app.wait(tid, 20)
    assert rec.status is TaskStatus.COMPLETED and rec.result == 42 and rec.attempts == 2


async def test_wait_timeout_and_unknown(app: LiteTask) -> None:
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 2)
    with pytest.raises(TimeoutError):
        await app.wait(tid, timeout=0.2)
    with pytest.raises(TaskNotFound):
        await app.wait("nope", timeout=1)
    assert await app.get_task("nope") is None


async def test_many_and_batch_enqueue(app: LiteTask) -> None:
    t = jobs.register(app)
    ids = await t["aadd"].adelay_many([((i, i), {}) for i in range(200)])
    assert len(ids) == len(set(ids)) == 200
    async with running_worker(app, concurrency=16):
        recs = [await app.wait(i, 30) for i in ids]
    assert [r.result for r in recs] == [2 * i for i in range(200)]


def test_sync_api_from_threads(broker_url: str) -> None:
    app = LiteTask(broker_url)
    t = jobs.register(app)
    ids: list[str] = []
    lock = threading.Lock()

    def produce() -> None:
        for i in range(25):
            tid = t["aadd"].delay(i, 1)
            with lock:
                ids.append(tid)

    ids.append(t["aadd"].delay(0, 0))  # starts the app's background loop
    threads_before = set(threading.enumerate())
    workers = [threading.Thread(target=produce) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ids += t["aadd"].delay_many([((1, 1), {}), ((2, 2), {})])
    # one background loop for the whole app, not a new loop or thread per call
    assert set(threading.enumerate()) <= threads_before
    assert len(set(ids)) == 103
    rec = app.get_task_sync(ids[0])
    assert rec is not None and rec.status is TaskStatus.PENDING
    assert app.cancel_sync(ids[0]) is True

    async def work() -> None:
        async with running_worker(app):
            await app.wait(ids[-1], 20)

    asyncio.run(work())
    done = app.wait_sync(ids[-1], timeout=5)
    assert done.result == 4
    assert app.wait_sync(ids[0], timeout=5).status is TaskStatus.CANCELLED
    app.close()


async def test_error_payload_is_json_object(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        rec = await app.wait(await t["fail_async"].adelay("x"), 20)
    assert rec.error is not None
    json.dumps(rec.error)
    assert set(rec.error) >= {"type", "message", "traceback"}


async def test_pool_task_pid_is_the_process_that_ran_it(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        ids = await t["getpid"].adelay_many([((), {})] * 30)
        recs = [await app.wait(i, 30) for i in ids]
    assert all(r.pid == r.result != os.getpid() for r in recs), [(r.pid, r.result) for r in recs]


async def test_cancelling_the_worker_task_stops_it_at_once(app: LiteTask) -> None:
    t = jobs.register(app)
    from litetask_async import Worker

    w = Worker(app, install_signal_handlers=False, grace_period=30)
    wt = asyncio.create_task(w.run())
    slow = await t["sleep_async"].adelay(30)
    done = await t["aadd"].adelay(1, 1)
    assert (await app.wait(done, 10)).status is TaskStatus.COMPLETED
    while (rec := await app.get_task(slow)) is not None and rec.status is not TaskStatus.RUNNING:
        await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    wt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wt
    assert loop.time() - t0 < 5  # not the 30 s grace period nor the task's 30 s
    rec = await app.get_task(slow)
    assert rec is not None and rec.status is TaskStatus.PENDING  # put back, not lost


async def test_pool_task_started_at_is_when_its_body_starts(app: LiteTask) -> None:
    """With one pool process, a second pool task is claimed at once but starts a second later:
    its started_at and pid are those of the real start, not of the claim."""
    t = jobs.register(app)
    async with running_worker(app, processes=1, concurrency=4):
        first = await t["sleep_pool"].adelay(1.0)
        second = await t["getpid"].adelay()
        r1, r2 = await app.wait(first, 30), await app.wait(second, 30)
    assert r1.started_at is not None and r2.started_at is not None and r1.finished_at is not None
    assert r2.started_at >= r1.started_at + datetime.timedelta(seconds=0.9), (r1.started_at, r2.started_at)
    assert r2.started_at >= r1.finished_at - datetime.timedelta(seconds=0.2)
    assert r2.pid == r2.result != os.getpid()


async def _steal(app: LiteTask, task_id: str) -> None:
    """Take the task from its worker, as another worker does after it missed heartbeats."""
    b = await app.broker()
    for _ in range(50):
        if task_id in await b.requeue_stalled(0.0, 3):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} could not be taken up")


async def test_an_attempt_taken_up_elsewhere_is_stopped_here(app: LiteTask, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []
    stopped = asyncio.Event()

    @app.task
    async def long_one() -> int:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                stopped.set()
                raise
        return len(attempts)

    async with running_worker(app, concurrency=1, heartbeat_interval=0.2, heartbeat_timeout=30):
        tid = await long_one.adelay()
        while not attempts:
            await asyncio.sleep(0.01)
        await _steal(app, tid)
        await asyncio.wait_for(stopped.wait(), 10)  # the next heartbeat finds it is not ours
        rec = await app.wait(tid, 20)
    assert rec.status is TaskStatus.COMPLETED and rec.result == 2 and rec.attempts == 2
    assert "no longer held by this worker" in caplog.text


async def test_a_late_outcome_is_refused_and_logged(app: LiteTask, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []
    go = asyncio.Event()

    @app.task
    async def racer() -> int:
        attempts.append(len(attempts) + 1)
        n = len(attempts)
        if n == 1:
            await go.wait()
        return n

    # heartbeats far apart: attempt 1 ends before this worker learns that it lost the task
    async with running_worker(app, concurrency=1, heartbeat_interval=20, heartbeat_timeout=60):
        tid = await racer.adelay()
        while not attempts:
            await asyncio.sleep(0.01)
        await _steal(app, tid)
        go.set()
        rec = await app.wait(tid, 20)
    assert rec.status is TaskStatus.COMPLETED and rec.result == 2 and rec.attempts == 2
    assert re.search(rf"outcome of task {tid} \(attempt 1, completed\) refused", caplog.text), caplog.text
