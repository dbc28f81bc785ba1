"""Queues, priorities, delayed and periodic tasks, unique keys, concurrency limits, retention:
on every broker."""

from __future__ import annotations

import asyncio
import itertools
import os
from datetime import UTC, datetime, timedelta

import pytest

from litetask_async import LiteTask, TaskStatus
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_configure_options_and_errors(app: LiteTask) -> None:
    t = jobs.register(app)
    call = t["aadd"].configure(queue="urgent", priority=7)
    tid = await call.adelay(1, 2)
    rec = await app.get_task(tid)
    assert rec is not None and rec.queue == "urgent" and rec.priority == 7
    plain = await app.get_task(await t["aadd"].adelay(1, 2))
    assert plain is not None and plain.queue == "default" and plain.priority == 0  # task unchanged
    with pytest.raises(TypeError, match="unknown option"):
        t["aadd"].configure(queueu="x")
    with pytest.raises(ValueError, match="timezone-aware"):
        t["aadd"].configure(eta=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="countdown"):
        t["aadd"].configure(countdown=-1)
    with pytest.raises(ValueError, match="not both"):
        t["aadd"].configure(countdown=1, eta=datetime.now(UTC))


async def test_worker_takes_only_its_queues(app: LiteTask) -> None:
    t = jobs.register(app)
    mine = await t["aadd"].configure(queue="emails").adelay(1, 1)
    other = await t["aadd"].configure(queue="reports").adelay(2, 2)
    async with running_worker(app, queues=["emails", "urgent"]):
        assert (await app.wait(mine, 10)).status is TaskStatus.COMPLETED
        await asyncio.sleep(0.5)
        rec = await app.get_task(other)
        assert rec is not None and rec.status is TaskStatus.PENDING
    async with running_worker(app, queues=["reports"]):
        assert (await app.wait(other, 10)).result == 4


async def test_priority_then_enqueue_order_with_concurrency_one(app: LiteTask) -> None:
    t = jobs.register(app)
    order = [(0, "low-1"), (10, "high-1"), (0, "low-2"), (5, "mid"), (10, "high-2")]
    ids = {}
    for prio, label in order:
        ids[label] = await t["tick"].configure(priority=prio).adelay()
    async with running_worker(app, concurrency=1):
        recs = {label: await app.wait(i, 10) for label, i in ids.items()}
    ran = sorted(recs, key=lambda label: recs[label].result)
    assert ran == ["high-1", "high-2", "mid", "low-1", "low-2"]


async def test_delayed_tasks_start_on_time_not_before(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app, poll_interval=30.0):  # the worker must sleep to run_at, not poll
        soon = await t["tick"].configure(countdown=1.5).adelay()
        at = datetime.now(UTC) + timedelta(seconds=2.5)
        later = await t["tick"].configure(eta=at).adelay()
        r1, r2 = await app.wait(soon, 20), await app.wait(later, 20)
    assert r1.run_at is not None and r2.run_at is not None
    assert r1.started_at is not None and r2.started_at is not None
    assert (r1.run_at - r1.created_at).total_seconds() == pytest.approx(1.5, abs=0.1)
    assert abs((r2.run_at - at).total_seconds()) < 0.01
    for r in (r1, r2):
        lateness = (r.started_at - r.run_at).total_seconds()  # type: ignore[operator]
        assert 0 <= lateness < 1.0, lateness


async def test_unique_key_dedupes_while_active(app: LiteTask) -> None:
    t = jobs.register(app)
    first = await t["aadd"].configure(unique_key="welcome:42").adelay(1, 1)
    again = await t["aadd"].configure(unique_key="welcome:42").adelay(9, 9)
    other = await t["aadd"].configure(unique_key="welcome:43").adelay(1, 1)
    many = await t["aadd"].configure(unique_key="welcome:42").adelay_many([((1, 1), {}), ((2, 2), {})])
    assert again == first and many == [first, first] and other != first
    async with running_worker(app):
        assert (await app.wait(first, 10)).result == 2
        # final: the key is free again
        fresh = await t["aadd"].configure(unique_key="welcome:42").adelay(5, 5)
        assert fresh != first
        assert (await app.wait(fresh, 10)).result == 10


async def test_max_concurrency_holds_and_others_flow(app: LiteTask) -> None:
    t = jobs.register(app)
    limited = await t["limited"].adelay_many([((0.4,), {})] * 6)
    free = await t["aadd"].adelay_many([((i, i), {}) for i in range(5)])
    async with running_worker(app, concurrency=8):
        frees = [await app.wait(i, 20) for i in free]
        recs = [await app.wait(i, 30) for i in limited]
    assert all(r.status is TaskStatus.COMPLETED for r in recs + frees)
    intervals = [r.result for r in recs]
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2, intervals
    # the free tasks did not wait for the limited ones
    assert max(r.finished_at for r in frees) < max(r.finished_at for r in recs)  # type: ignore[type-var]


async def test_periodic_task_runs_each_tick_once(broker_url: str) -> None:
    app = LiteTask(broker_url)
    runs: list[float] = []

    @app.periodic(every=1, name="tests.periodic.every_second")
    async def every_second() -> None:
        import time

        runs.append(time.time())

    async with running_worker(app), running_worker(app):  # two workers, one schedule
        await asyncio.sleep(4.3)
    # the first tick after the schedule is first seen, then one run a second
    assert 3 <= len(runs) <= 5, runs
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert all(g > 0.6 for g in gaps), f"two runs for one tick: {gaps}"
    await app.aclose()


async def test_purge_deletes_only_old_finished_tasks(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        done = [await app.wait(await t["aadd"].adelay(i, i), 10) for i in range(3)]
        failed = await app.wait(await t["fail_async"].adelay("x"), 10)
    pending = await t["aadd"].configure(countdown=3600).adelay(1, 1)
    assert await app.purge(timedelta(hours=1)) == 0  # nothing that old
    await asyncio.sleep(0.2)
    assert await app.purge(0.1) == 4
    for r in [*done, failed]:
        assert await app.get_task(r.id) is None
    assert (await app.get_task(pending)) is not None


async def test_result_ttl_purges_in_the_background(broker_url: str) -> None:
    app = LiteTask(broker_url, result_ttl=timedelta(seconds=0.5))
    t = jobs.register(app)
    async with running_worker(app):
        tid = await t["aadd"].adelay(1, 1)
        await app.wait(tid, 10)
        for _ in range(50):
            if await app.get_task(tid) is None:
                break
            await asyncio.sleep(0.1)
    assert await app.get_task(tid) is None
    await app.aclose()


async def test_tasks_enqueue_follow_ups_from_async_and_pool(app: LiteTask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITETASK_CHAIN_URL", app.url)
    t = jobs.register(app)
    if app.url.startswith("memory"):
        # A pool process cannot reach the worker's memory: a clear error, not a lost enqueue.
        async with running_worker(app):
            a = await app.wait(await t["chain_async"].adelay(10), 20)
            p = await app.wait(await t["chain_pool"].adelay(20), 20)
            follow = await app.wait(a.result, 20)
        assert follow.result == 11
        assert p.status is TaskStatus.FAILED and p.error is not None
        assert p.error["type"] == "ConfigurationError" and "memory://" in p.error["message"]
        assert "pool process" in p.error["message"]
        return
    async with running_worker(app):
        a = await app.wait(await t["chain_async"].adelay(10), 20)
        p = await app.wait(await t["chain_pool"].adelay(20), 20)
        followups = [await app.wait(r.result, 20) for r in (a, p)]
    assert [f.result for f in followups] == [11, 22]
    assert os.environ["LITETASK_CHAIN_URL"] == app.url
