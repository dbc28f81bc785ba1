"""The broker contract, run against every broker (memory, SQLite; PostgreSQL joins later)."""

from __future__ import annotations

import asyncio
import json

import pytest

from litetask_async import LiteTask, TaskNotFound, TaskStatus
from litetask_async.brokers.base import Broker, RunningUpdate
from litetask_async.records import NewTask, Outcome, OutcomeKind
from litetask_async.tasks import new_task

pytestmark = pytest.mark.anyio


def nt(name: str = "t", priority: int = 0, max_attempts: int = 1, n: int = 0) -> NewTask:
    return new_task(name, [n], {}, priority=priority, max_attempts=max_attempts)


async def broker_of(app: LiteTask) -> Broker:
    return await app.broker()


async def test_enqueue_get_roundtrip(app: LiteTask) -> None:
    b = await broker_of(app)
    t = new_task("x", [1, "a", None], {"k": [1, 2]})
    await b.enqueue([t])
    rec = await b.get(t.id)
    assert rec is not None
    assert rec.id == t.id and rec.name == "x" and rec.status is TaskStatus.PENDING
    assert rec.args == [1, "a", None] and rec.kwargs == {"k": [1, 2]}
    assert rec.attempts == 0 and rec.progress == 0 and rec.result is None and rec.error is None
    assert rec.created_at.tzinfo is not None and rec.started_at is None and rec.finished_at is None
    assert await b.get("nope") is None


async def test_enqueue_many_is_all_or_nothing(app: LiteTask) -> None:
    b = await broker_of(app)
    first = nt()
    await b.enqueue([first])
    with pytest.raises(Exception):  # noqa: B017 - each database raises its own integrity error
        await b.enqueue([nt(), first])  # duplicate id in the batch
    # nothing of the failed batch is stored besides the original
    claimed = await b.claim("w", 1, 10)
    assert [c.id for c in claimed] == [first.id]


async def test_claim_marks_running_and_respects_limit(app: LiteTask) -> None:
    b = await broker_of(app)
    tasks = [nt(n=i) for i in range(5)]
    await b.enqueue(tasks)
    claimed = await b.claim("w1", 4242, 3)
    assert len(claimed) == 3
    assert [c.id for c in claimed] == [t.id for t in tasks[:3]] or \
        sorted(c.id for c in claimed) == sorted(t.id for t in tasks[:3])
    for c in claimed:
        assert c.attempts == 1
        rec = await b.get(c.id)
        assert rec is not None and rec.status is TaskStatus.RUNNING
        assert rec.worker_id == "w1" and rec.pid == 4242 and rec.started_at is not None
    rest = await b.claim("w2", 1, 10)
    assert sorted(c.id for c in rest) == sorted(t.id for t in tasks[3:])
    assert await b.claim("w3", 1, 10) == []


async def test_claim_order_priority_then_fifo(app: LiteTask) -> None:
    b = await broker_of(app)
    low1, high, low2, mid = nt(n=1), nt(priority=10, n=2), nt(n=3), nt(priority=5, n=4)
    for t in (low1, high, low2, mid):
        await b.enqueue([t])
    order = [(await b.claim("w", 1, 1))[0].id for _ in range(4)]
    assert order == [high.id, mid.id, low1.id, low2.id]


async def test_concurrent_claims_never_share_a_task(app: LiteTask) -> None:
    b = await broker_of(app)
    tasks = [nt(n=i) for i in range(300)]
    await b.enqueue(tasks)

    async def claimer(i: int) -> list[str]:
        got: list[str] = []
        while True:
            batch = await b.claim(f"w{i}", i, 7)
            if not batch:
                return got
            got.extend(c.id for c in batch)

    results = await asyncio.gather(*(claimer(i) for i in range(8)))
    all_ids = [tid for r in results for tid in r]
    assert len(all_ids) == len(set(all_ids)) == 300


async def test_finish_completed_failed_and_guard(app: LiteTask) -> None:
    b = await broker_of(app)
    t1, t2 = nt(n=1), nt(n=2)
    await b.enqueue([t1, t2])
    c1, c2 = await b.claim("w", 1, 2)
    err = json.dumps({"type": "ValueError", "message": "x", "traceback": "tb"})
    applied = await b.finish([
        Outcome(c1.id, "w", c1.attempts, OutcomeKind.COMPLETED, result_json='{"ok": 1}', pid=77),
        Outcome(c2.id, "w", c2.attempts, OutcomeKind.FAILED, error_json=err),
        Outcome(c1.id, "other", 1, OutcomeKind.FAILED, error_json=err),  # wrong worker: ignored
    ])
    assert sorted(applied) == sorted([c1.id, c2.id])
    r1, r2 = await b.get(c1.id), await b.get(c2.id)
    assert r1 is not None and r1.status is TaskStatus.COMPLETED and r1.result == {"ok": 1}
    assert r1.progress == 100 and r1.pid == 77 and r1.finished_at is not None
    assert r2 is not None and r2.status is TaskStatus.FAILED and r2.error == json.loads(err)
    # a final task is never changed again
    assert await b.finish([Outcome(c1.id, "w", c1.attempts, OutcomeKind.FAILED, error_json=err)]) == []
    assert (await b.get(c1.id)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


async def test_retry_and_release_go_back_to_pending(app: LiteTask) -> None:
    b = await broker_of(app)
    t = nt(max_attempts=3)
    await b.enqueue([t])
    (c,) = await b.claim("w", 1, 1)
    err = json.dumps({"type": "E", "message": "m", "traceback": None})
    assert await b.finish([Outcome(c.id, "w", 1, OutcomeKind.RETRY, error_json=err, retry_delay=0.3)])
    rec = await b.get(t.id)
    assert rec is not None and rec.status is TaskStatus.PENDING and rec.error == json.loads(err)
    assert await b.claim("w", 1, 1) == []  # not due yet
    await asyncio.sleep(0.4)
    (c,) = await b.claim("w", 1, 1)
    assert c.attempts == 2
    assert await b.finish([Outcome(c.id, "w", 2, OutcomeKind.RELEASE)])
    rec = await b.get(t.id)
    assert rec is not None and rec.status is TaskStatus.PENDING and rec.max_attempts == 4
    (c,) = await b.claim("w", 1, 1)
    assert c.attempts == 3


async def test_stalled_tasks_rescued_once_then_failed(app: LiteTask) -> None:
    b = await broker_of(app)
    t = nt()
    await b.enqueue([t])
    (c,) = await b.claim("dead", 1, 1)
    await asyncio.sleep(0.3)
    # two rescuers at once: exactly one rescues
    r1, r2 = await asyncio.gather(b.requeue_stalled(0.1, 1), b.requeue_stalled(0.1, 1))
    assert sorted(r1 + r2) == [t.id]
    rec = await b.get(t.id)
    assert rec is not None and rec.status is TaskStatus.PENDING and rec.worker_id is None
    # the dead worker's late outcome is ignored
    assert await b.finish([Outcome(c.id, "dead", c.attempts, OutcomeKind.COMPLETED, result_json="1")]) == []
    (c2,) = await b.claim("alive", 1, 1)
    assert c2.attempts == 2
    await asyncio.sleep(0.3)
    assert await b.requeue_stalled(0.1, 1) == [t.id]  # rescue budget used up: failed
    rec = await b.get(t.id)
    assert rec is not None and rec.status is TaskStatus.FAILED and rec.error is not None
    assert rec.error["type"] == "WorkerLost"


async def test_heartbeat_keeps_claim_alive(app: LiteTask) -> None:
    b = await broker_of(app)
    t = nt()
    await b.enqueue([t])
    await b.claim("w", 1, 1)
    for _ in range(4):
        await asyncio.sleep(0.1)
        await b.heartbeat("w", [t.id])
        assert await b.requeue_stalled(0.25, 3) == []
    rec = await b.get(t.id)
    assert rec is not None and rec.status is TaskStatus.RUNNING


async def test_heartbeat_returns_the_tasks_still_held(app: LiteTask) -> None:
    b = await broker_of(app)
    mine, rescued, other = nt(n=1), nt(n=2), nt(n=3)
    await b.enqueue([mine, rescued, other])
    await b.claim("w", 1, 2)
    await b.claim("x", 2, 1)
    await asyncio.sleep(0.3)
    await b.heartbeat("w", [mine.id])
    assert sorted(await b.requeue_stalled(0.25, 3)) == sorted([rescued.id, other.id])
    # a rescued task, another worker's task and an unknown id are not held by "w"
    assert await b.heartbeat("w", [mine.id, rescued.id, other.id, "nope"]) == [mine.id]


async def test_clock_offset_is_small_on_one_machine(app: LiteTask) -> None:
    b = await broker_of(app)
    assert abs(await b.clock_offset()) < 1.0


async def test_progress_and_pid_updates(app: LiteTask) -> None:
    b = await broker_of(app)
    t = nt()
    await b.enqueue([t])
    await b.claim("w", 1, 1)
    await b.update_running([RunningUpdate(t.id, 40, None)], "w")
    await b.update_running([RunningUpdate(t.id, 99, 1)], "another-worker")  # not its task: ignored
    await b.update_running([RunningUpdate(t.id, None, 999)], "w")
    rec = await b.get(t.id)
    assert rec is not None and rec.progress == 40 and rec.pid == 999


async def test_cancel_pending_running_final_unknown(app: LiteTask) -> None:
    b = await broker_of(app)
    p, r = nt(n=1), nt(n=2)
    await b.enqueue([r])
    (c,) = await b.claim("w", 1, 1)
    await b.enqueue([p])
    assert await b.cancel(p.id) is True
    rec = await b.get(p.id)
    assert rec is not None and rec.status is TaskStatus.CANCELLED and rec.finished_at is not None
    assert await b.claim("w", 1, 5) == []  # a cancelled task never runs
    assert await b.cancel(r.id) is True
    assert await b.cancel_requested([r.id, p.id]) == [r.id]
    assert await b.finish([Outcome(c.id, "w", 1, OutcomeKind.CANCELLED)]) == [r.id]
    assert await b.cancel(r.id) is False  # already final: says so, changes nothing
    assert await b.cancel(p.id) is False
    with pytest.raises(TaskNotFound):
        await b.cancel("no-such-id")


async def test_wait_for_work_wakes_on_enqueue(app: LiteTask) -> None:
    b = await broker_of(app)
    await b.wait_for_work(0.01)  # prime
    other = LiteTask(app.url)
    loop = asyncio.get_running_loop()

    async def later() -> None:
        await asyncio.sleep(0.1)
        await other._enqueue([nt()])

    bg = asyncio.create_task(later())
    t0 = loop.time()
    await b.wait_for_work(5.0)
    assert loop.time() - t0 < 2.0
    await bg
    await other.aclose()


@pytest.mark.parametrize("kind", [OutcomeKind.RETRY, OutcomeKind.RELEASE, "rescue"])
async def test_cancel_request_wins_over_going_back_to_pending(app: LiteTask, kind: object) -> None:
    b = await broker_of(app)
    t = nt(max_attempts=3)
    await b.enqueue([t])
    (c,) = await b.claim("w", 1, 1)
    assert await b.cancel(t.id) is True  # running: flagged
    if kind == "rescue":
        await asyncio.sleep(0.2)
        assert await b.requeue_stalled(0.1, 3) == [t.id]
    else:
        assert await b.finish([Outcome(c.id, "w", 1, kind, retry_delay=0.0)]) == [t.id]  # type: ignore[arg-type]
    rec = await b.get(t.id)
    assert rec is not None and rec.status is TaskStatus.CANCELLED and rec.finished_at is not None
    assert await b.claim("w", 1, 5) == []  # it never runs again


async def finish_and_claim_first_round(b: Broker, ids: list[str]) -> None:
    """Of five pending tasks a..e: claim a, b, c as worker w1; ask c to cancel; then one
    finish_and_claim with a completed, b "completed" for an attempt it is not in, c retried:
    a and c are finished (c cancelled, as asked), b is not, and d and e are claimed."""
    a, bb, c, d, e = ids
    assert {x.id for x in await b.claim("w1", 1, 3)} == {a, bb, c}
    assert await b.cancel(c) is True  # running: flagged for its worker
    outcomes = [Outcome(a, "w1", 1, OutcomeKind.COMPLETED, result_json="0"),
                Outcome(bb, "w1", 2, OutcomeKind.COMPLETED, result_json="2"),  # not its attempt
                Outcome(c, "w1", 1, OutcomeKind.RETRY, error_json='{"type": "E"}', retry_delay=0)]
    finished, claimed = await b.finish_and_claim(outcomes, "w1", 1, 5)
    assert sorted(finished) == sorted([a, c])
    assert sorted(x.id for x in claimed) == sorted([d, e])


async def test_finish_and_claim_has_finish_and_claim_semantics(app: LiteTask) -> None:
    """finish_and_claim (one transaction on SQLite and PostgreSQL, two calls on memory) writes
    outcomes as finish() does (only the worker's own attempt; a retry whose task was asked to
    cancel ends cancelled) and claims as claim() does; a task put back by a retry is claimed by
    that call or the next."""
    b = await broker_of(app)
    a, bb, c, d, e = await b.enqueue([nt(n=i) for i in range(5)])
    await finish_and_claim_first_round(b, [a, bb, c, d, e])
    statuses = {t: (await b.get(t)).status for t in (a, bb, c, d, e)}  # type: ignore[union-attr]
    assert statuses == {a: TaskStatus.COMPLETED, bb: TaskStatus.RUNNING, c: TaskStatus.CANCELLED,
                        d: TaskStatus.RUNNING, e: TaskStatus.RUNNING}
    finished, claimed = await b.finish_and_claim(
        [Outcome(d, "w1", 1, OutcomeKind.RETRY, error_json='{"type": "E"}', retry_delay=0)], "w1", 1, 5)
    assert finished == [d]
    if not claimed:  # PostgreSQL: the claim reads the statement's snapshot, from before the retry
        assert (await b.get(d)).status is TaskStatus.PENDING  # type: ignore[union-attr]
        claimed = await b.claim("w1", 1, 5)
    assert [(x.id, x.attempts) for x in claimed] == [(d, 2)]
