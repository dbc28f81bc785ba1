"""Property-based tests (hypothesis) of the task state machine, against the real brokers.

A model of every task's state runs beside the broker; random sequences of enqueue, claim,
finish (right and wrong worker/attempt), cancel and rescue must keep both in step, and no task
ever leaves a final state.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from litetask_async import LiteTask, TaskStatus
from litetask_async.brokers.base import Broker
from litetask_async.records import FINAL_STATUSES, Outcome, OutcomeKind
from litetask_async.tasks import new_task

MAX_RESCUES = 2


@dataclass
class Model:
    status: TaskStatus
    worker: str | None = None
    attempts: int = 0
    max_attempts: int = 1
    rescues: int = 0
    cancel_requested: bool = False
    final_record: Any = None


class TaskStateMachine(RuleBasedStateMachine):
    url_kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        url = (f"memory://sm-{uuid.uuid4().hex}" if self.url_kind == "memory"
               else f"sqlite:///{Path(self.tmp.name) / 'sm.db'}")
        self.app = LiteTask(url)
        self.broker: Broker = self.run(self.app.broker())
        self.model: dict[str, Model] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.app.aclose())
        self.loop.close()
        self.tmp.cleanup()

    def running(self) -> list[str]:
        return sorted(t for t, m in self.model.items() if m.status is TaskStatus.RUNNING)

    @initialize(n=st.integers(1, 4))
    def start(self, n: int) -> None:
        self.enqueue(n, 0)

    @rule(n=st.integers(1, 4), retries=st.integers(0, 2))
    def enqueue(self, n: int, retries: int) -> None:
        tasks = [new_task("t", [i], {}, max_attempts=retries + 1) for i in range(n)]
        self.run(self.broker.enqueue(tasks))
        for t in tasks:
            self.model[t.id] = Model(TaskStatus.PENDING, max_attempts=retries + 1)

    @rule(worker=st.sampled_from(["w1", "w2"]), limit=st.integers(1, 5))
    def claim(self, worker: str, limit: int) -> None:
        pending = sum(m.status is TaskStatus.PENDING for m in self.model.values())
        claimed = self.run(self.broker.claim(worker, 1, limit))
        assert len(claimed) == min(limit, pending)
        for c in claimed:
            m = self.model[c.id]
            assert m.status is TaskStatus.PENDING, f"claimed a task that is {m.status}"
            m.status, m.worker, m.attempts = TaskStatus.RUNNING, worker, m.attempts + 1
            assert c.attempts == m.attempts

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), kind=st.sampled_from(list(OutcomeKind)),
          wrong=st.sampled_from([None, "worker", "attempt"]))
    def finish(self, data: st.DataObject, kind: OutcomeKind, wrong: str | None) -> None:
        tid = data.draw(st.sampled_from(list(self.model)))
        m = self.model[tid]
        worker = m.worker or "w1"
        attempt = m.attempts
        if wrong == "worker":
            worker = "someone-else"
        elif wrong == "attempt":
            attempt += 1
        err = json.dumps({"type": "E", "message": "m", "traceback": None, "attempt": attempt})
        out = Outcome(tid, worker, attempt, kind, result_json="1" if kind is OutcomeKind.COMPLETED else None,
                      error_json=err if kind in (OutcomeKind.FAILED, OutcomeKind.RETRY) else None,
                      retry_delay=0.0)
        applied = self.run(self.broker.finish([out]))
        should = m.status is TaskStatus.RUNNING and wrong is None and m.worker == worker
        assert applied == ([tid] if should else []), (m, kind, wrong)
        if not should:
            return
        if kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE) and m.cancel_requested:
            m.status = TaskStatus.CANCELLED  # a cancel request wins over going back to pending
        elif kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE):
            m.status, m.worker = TaskStatus.PENDING, None
            if kind is OutcomeKind.RELEASE:
                m.max_attempts += 1
        else:
            m.status = TaskStatus(kind.value)
        m.cancel_requested = False

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(list(self.model)))
        m = self.model[tid]
        result = self.run(self.broker.cancel(tid))
        assert result is (m.status not in FINAL_STATUSES)
        if m.status is TaskStatus.PENDING:
            m.status = TaskStatus.CANCELLED
        elif m.status is TaskStatus.RUNNING:
            m.cancel_requested = True

    @rule()
    def rescue_all_running(self) -> None:
        expected = set(self.running())
        rescued = self.run(self.broker.requeue_stalled(-1.0, MAX_RESCUES))  # every heartbeat is stale
        assert set(rescued) == expected
        for tid in expected:
            m = self.model[tid]
            m.worker = None
            if m.cancel_requested:
                m.status = TaskStatus.CANCELLED
            elif m.rescues < MAX_RESCUES:
                m.status = TaskStatus.PENDING
                m.max_attempts += 1
            else:
                m.status = TaskStatus.FAILED
            m.rescues += 1
            m.cancel_requested = False

    @invariant()
    def broker_agrees_and_finals_never_change(self) -> None:
        for tid, m in self.model.items():
            rec = self.run(self.broker.get(tid))
            assert rec is not None
            assert rec.status is m.status, (tid, rec.status, m.status)
            assert rec.attempts == m.attempts and rec.max_attempts == m.max_attempts
            if m.status in FINAL_STATUSES:
                assert rec.finished_at is not None
                snapshot = (rec.status, rec.result, rec.error, rec.finished_at, rec.attempts)
                if m.final_record is None:
                    m.final_record = snapshot
                assert snapshot == m.final_record, "a final task changed"
            elif m.status is TaskStatus.RUNNING:
                assert rec.worker_id == m.worker


class SQLiteTaskStateMachine(TaskStateMachine):
    url_kind = "sqlite"


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TaskStateMachine.TestCase.settings = SETTINGS
SQLiteTaskStateMachine.TestCase.settings = SETTINGS
TestMemoryStateMachine = TaskStateMachine.TestCase
TestSQLiteStateMachine = SQLiteTaskStateMachine.TestCase
