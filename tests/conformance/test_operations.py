"""Operating it, on every broker: listing, retrying, stats, workers, task logs, status lines."""

from __future__ import annotations

import asyncio

import pytest

from litetask_async import LiteTask, TaskNotFound, TaskStatus
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


async def test_list_tasks_newest_first_with_filters_and_keyset_pages(app: LiteTask) -> None:
    t = jobs.register(app)
    ids = [await t["aadd"].configure(queue="q1" if i % 2 else "q2").adelay(i, i) for i in range(7)]
    fail = await t["fail_async"].adelay("x")
    async with running_worker(app):
        await app.wait(fail, 10)
        for i in ids:
            await app.wait(i, 10)
    newest = await app.list_tasks(limit=3)
    assert [r.id for r in newest] == [fail, ids[6], ids[5]]
    page2 = await app.list_tasks(limit=3, before=newest[-1].id)
    assert [r.id for r in page2] == [ids[4], ids[3], ids[2]]
    assert [r.id for r in await app.list_tasks(status="failed")] == [fail]
    assert [r.id for r in await app.list_tasks(status=TaskStatus.COMPLETED, queue="q1")] == [ids[5], ids[3], ids[1]]
    assert {r.name for r in await app.list_tasks(name="tests.jobs.fail_async")} == {"tests.jobs.fail_async"}
    with pytest.raises(ValueError):
        await app.list_tasks(status="nonsense")
    with pytest.raises(TaskNotFound):
        await app.list_tasks(before="no-such-id")


async def test_list_by_name_or_queue_spans_every_state(app: LiteTask) -> None:
    """A listing filtered by name or queue finds finished, running and pending tasks alike,
    newest first, page by page (on SQLite these live in different indexes)."""
    t = jobs.register(app)
    mix = {"queue": "mix"}
    done = await t["aadd"].configure(**mix).adelay(1, 1)
    other = await t["aadd"].configure(queue="other").adelay(2, 2)
    async with running_worker(app, queues=["mix", "other"]):
        await app.wait(done, 10)
        await app.wait(other, 10)
        running = await t["sleep_async"].configure(**mix).adelay(30)
        for _ in range(200):
            if (rec := await app.get_task(running)) and rec.status is TaskStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
        waiting = await t["aadd"].configure(countdown=3600, **mix).adelay(3, 3)
        failed = await t["fail_async"].configure(**mix).adelay("x")
        await app.wait(failed, 10)
        assert [r.id for r in await app.list_tasks(queue="mix")] == [failed, waiting, running, done]
        assert [r.id for r in await app.list_tasks(name="tests.jobs.aadd")] == [waiting, other, done]
        assert [r.id for r in await app.list_tasks(name="tests.jobs.aadd", queue="mix")] == [waiting, done]
        first = await app.list_tasks(queue="mix", limit=2)
        assert [r.id for r in first] == [failed, waiting]
        rest = await app.list_tasks(queue="mix", limit=2, before=first[-1].id)
        assert [r.id for r in rest] == [running, done]
        by_state = {s: [r.id for r in await app.list_tasks(queue="mix", status=s)]
                    for s in ("pending", "running", "completed", "failed", "cancelled")}
        assert by_state == {"pending": [waiting], "running": [running], "completed": [done],
                            "failed": [failed], "cancelled": []}
        await app.cancel(running)


async def test_retry_failed_and_cancelled_keeps_history(app: LiteTask, tmp_path: object) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        failed = await app.wait(await t["fail_async"].adelay("first"), 10)
        assert failed.status is TaskStatus.FAILED
        assert await app.retry(failed.id) is True
        again = await app.wait(failed.id, 10)
        assert again.status is TaskStatus.FAILED and again.attempts == 2
        assert [e["attempt"] for e in again.errors] == [1, 2]
        done = await app.wait(await t["aadd"].adelay(1, 1), 10)
        assert await app.retry(done.id) is False  # only failed or cancelled tasks
    cancelled = await t["aadd"].adelay(2, 2)
    await app.cancel(cancelled)
    assert await app.retry(cancelled) is True
    async with running_worker(app):
        assert (await app.wait(cancelled, 10)).result == 4
    with pytest.raises(TaskNotFound):
        await app.retry("nope")


async def test_stats_and_workers(app: LiteTask) -> None:
    t = jobs.register(app)
    await t["aadd"].configure(queue="later", countdown=3600).adelay(1, 1)
    await t["aadd"].configure(queue="now").adelay(1, 1)
    await asyncio.sleep(0.2)
    stats = await app.stats()
    assert stats["by_queue"]["now"]["pending"] == 1 and stats["by_queue"]["later"]["pending"] == 1
    assert stats["oldest_pending_age"] is not None and stats["oldest_pending_age"] >= 0.1
    assert stats["workers_alive"] == 0
    assert await app.workers() == []
    async with running_worker(app, queues=["now"], concurrency=3) as w:
        await asyncio.sleep(0.5)
        workers = await app.workers()
        assert [x.id for x in workers] == [w.id]
        info = workers[0]
        assert info.queues == ["now"] and info.concurrency == 3 and info.pid > 0
        assert info.last_heartbeat >= info.started_at
        stats = await app.stats()
        assert stats["workers_alive"] == 1 and stats["completed_last_minute"] == 1
        assert stats["totals"]["completed"] == 1
    assert await app.workers() == []  # unregistered on a clean stop


async def test_logs_from_async_and_pool_tasks_and_status_line(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        a = await t["logs_async"].adelay(3)
        p = await t["logs_pool"].adelay(3)
        await asyncio.sleep(0.35)
        mid = await app.get_task(a)
        ra, rp = await app.wait(a, 20), await app.wait(p, 20)
    assert mid is not None and mid.status_message == "half way" and mid.progress == 50
    assert rp.status_message == "half way in the pool"
    la = await app.task_logs(a)
    lp = await app.task_logs(p)
    assert [x.message for x in la] == ["async step 0", "async step 1", "async step 2"]
    assert [x.message for x in lp] == ["pool step 0", "pool step 1", "pool step 2", "pool done"]
    assert lp[-1].level == "WARNING" and all(x.attempt == 1 for x in la + lp)
    assert all(x.at.tzinfo is not None for x in la)
    assert ra.status is TaskStatus.COMPLETED
    with pytest.raises(TaskNotFound):
        await app.task_logs("no-such-task")


async def test_counts_durations_and_throughput_for_metrics(app: LiteTask) -> None:
    from litetask_async.brokers.base import DURATION_BUCKETS, bucket_index

    t = jobs.register(app)
    async with running_worker(app):
        for i in range(3):
            await app.wait(await t["aadd"].adelay(i, i), 10)
        await app.wait(await t["flaky_async"].adelay(f"m-{app.url}", 1), 10)
        await app.wait(await t["sleep_async"].adelay(0.3), 10)
    b = await app.broker()
    counts = {(n, s): (c, r) for n, s, c, r in await b.name_counts()}
    assert counts[("tests.jobs.aadd", "completed")] == (3, 0)
    assert counts[("tests.jobs.flaky_async", "completed")] == (1, 1)  # retried once
    durations = {(n, i): (c, total) for n, i, c, total in await b.durations()}
    slow = [(i, c, total) for (n, i), (c, total) in durations.items() if n == "tests.jobs.sleep_async"]
    assert len(slow) == 1 and slow[0][0] == bucket_index(0.3) and slow[0][1] == 1
    assert 0.29 < slow[0][2] < 1.0 and DURATION_BUCKETS[slow[0][0]] >= 0.3
    per_minute = await b.throughput(3600, 60)
    assert sum(c for _, c, _ in per_minute) == 5 and sum(f for *_, f in per_minute) == 0
