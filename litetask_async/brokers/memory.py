"""In-memory broker: for tests and single-process apps. Same semantics as the database brokers.

All brokers created with the same ``memory://name`` URL in one process share one store, so the sync
facade, the app's loop and a worker in the same process see the same tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..exceptions import ConfigurationError, TaskNotFound
from ..records import (
    FINAL_STATUSES,
    ClaimedTask,
    LogRecord,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskStatus,
    WorkerInfo,
    utc_from_timestamp,
)
from .base import (
    Broker,
    RunningUpdate,
    bounded_delay,
    bucket_index,
    record_from_row,
    stats_dict,
    worker_lost_error,
)


@dataclass
class _Row:
    seq: int
    id: str
    name: str
    args: str
    kwargs: str
    queue: str
    priority: int
    max_attempts: int
    created_at: float
    run_at: float
    status: TaskStatus = TaskStatus.PENDING
    progress: int = 0
    result: str | None = None
    error: str | None = None
    errors: str = "[]"
    pid: int | None = None
    attempts: int = 0
    rescues: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    worker_id: str | None = None
    cancel_requested: bool = False
    unique_key: str | None = None
    max_concurrency: int | None = None
    status_message: str | None = None
    trace_context: str | None = None
    pushed: int = 0  # which entry of the pending index is this row's current one


# A pending row's entry in the claim index: in claim order (limited tasks last, then priority,
# due time, enqueue order), with the row's ``pushed`` number; an entry whose row has been pushed
# again, or is no longer pending, is skipped and dropped when it comes up.
_Entry = tuple[bool, int, float, int, str, int]


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: dict[str, _Row] = field(default_factory=dict)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)
    ticks: dict[str, float] = field(default_factory=dict)
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)  # info, last beat
    logs: dict[str, list[LogRecord]] = field(default_factory=dict)
    # The pending index, so that a claim costs O(log n) per task, not a sort of every row: due
    # entries per queue (a heap in claim order), and entries not yet due (a heap by due time).
    ready: dict[str, list[_Entry]] = field(default_factory=dict)
    later: list[tuple[float, _Entry, str]] = field(default_factory=list)
    pushes: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def push(self, row: _Row, now: float) -> None:
        """Index a row that has just become pending (call it whenever a row becomes pending)."""
        row.pushed = next(self.pushes)
        entry = (row.max_concurrency is not None, -row.priority, row.run_at, row.seq, row.id, row.pushed)
        if row.run_at <= now:
            heapq.heappush(self.ready.setdefault(row.queue, []), entry)
        else:
            heapq.heappush(self.later, (row.run_at, entry, row.queue))

    def current(self, entry: _Entry) -> _Row | None:
        row = self.rows.get(entry[4])
        return row if row is not None and row.status is TaskStatus.PENDING and row.pushed == entry[5] else None

    def promote(self, now: float) -> None:
        """Move the entries that have become due to their queue's heap."""
        while self.later and self.later[0][0] <= now:
            _, entry, queue = heapq.heappop(self.later)
            if self.current(entry) is not None:
                heapq.heappush(self.ready.setdefault(queue, []), entry)

    def head(self, heap: list[_Entry]) -> _Entry | None:
        """The heap's first live entry (stale ones are dropped)."""
        while heap and self.current(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def earliest_pending(self, queues: Sequence[str] | None) -> float | None:
        """The due time of a due task of ``queues`` (any: all are in the past), else of the
        first that will be."""
        due = [e[2] for e in map(self.head, self.ready_of(queues)) if e is not None]
        if due:
            return min(due)
        while self.later and self.current(self.later[0][1]) is None:
            heapq.heappop(self.later)
        if queues is None:
            return self.later[0][0] if self.later else None
        return min((t for t, e, q in self.later if q in queues and self.current(e)), default=None)

    def ready_of(self, queues: Sequence[str] | None) -> list[list[_Entry]]:
        return [h for q, h in self.ready.items() if queues is None or q in queues]

    def active_with_key(self, key: str) -> _Row | None:
        for r in self.rows.values():
            if r.unique_key == key and r.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
                return r
        return None

    def wake(self) -> None:
        for loop, event in list(self.waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                self.waiters.discard((loop, event))


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store_for(name: str) -> _Store:
    with _stores_lock:
        return _stores.setdefault(name, _Store())


def _apply_outcome(row: _Row, out: Outcome, now: float) -> bool:
    """Apply a finished attempt's outcome; True if the task went back to pending."""
    kind = out.kind
    if out.pid is not None:
        row.pid = out.pid
    if out.error_json is not None:
        _add_error(row, out.error_json)
    if kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE) and row.cancel_requested:
        kind = OutcomeKind.CANCELLED  # asked to cancel: it does not go back to pending
    if kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE):
        row.status = TaskStatus.PENDING
        row.worker_id = None
        row.heartbeat_at = None
        row.cancel_requested = False
        row.run_at = now + bounded_delay(out.retry_delay, now)
        if kind is OutcomeKind.RELEASE:
            row.max_attempts += 1
        return True
    row.status = TaskStatus(kind.value)
    row.finished_at = now
    row.cancel_requested = False
    if kind is OutcomeKind.COMPLETED:
        row.result = out.result_json
        row.progress = 100
    return False


class MemoryBroker(Broker):
    """Tasks kept in a dict guarded by a lock; wake-ups are pushed to every waiting loop."""

    poll_interval = 1.0

    def __init__(self, name: str = "default") -> None:
        from .. import executor

        if executor.IN_POOL_PROCESS:
            # Its tasks live in the worker's memory; a store made here would be lost silently.
            raise ConfigurationError(
                "the in-memory broker (memory://) cannot be used from a pool process (a plain "
                "def task): its tasks live in the worker's process. Enqueue from an async task, "
                "or use SQLite or PostgreSQL")
        self.name = name
        self._store = _store_for(name)
        self._event: asyncio.Event | None = None

    async def open(self) -> None:
        self._event = asyncio.Event()
        with self._store.lock:
            self._store.waiters.add((asyncio.get_running_loop(), self._event))

    async def close(self) -> None:
        if self._event is not None:
            with self._store.lock:
                self._store.waiters = {w for w in self._store.waiters if w[1] is not self._event}
            self._event = None

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[str]:
        with self._store.lock:
            ids = self._insert(tasks)
            self._store.wake()
        return ids

    def _insert(self, tasks: Sequence[NewTask]) -> list[str]:
        now = time.time()
        st = self._store
        for t in tasks:
            if t.id in st.rows:
                raise ValueError(f"task id {t.id!r} already exists")
        ids = []
        for t in tasks:
            held = st.active_with_key(t.unique_key) if t.unique_key is not None else None
            if held is not None:
                ids.append(held.id)
                continue
            row = st.rows[t.id] = _Row(
                seq=next(st.seq), id=t.id, name=t.name, args=t.args_json,
                kwargs=t.kwargs_json, queue=t.queue, priority=t.priority,
                max_attempts=t.max_attempts, created_at=now,
                run_at=t.eta if t.eta is not None else now + (t.countdown or 0.0),
                unique_key=t.unique_key, max_concurrency=t.max_concurrency,
                trace_context=t.trace_context,
            )
            st.push(row, now)
            ids.append(t.id)
        return ids

    async def claim(self, worker_id: str, pid: int, limit: int,
                    queues: Sequence[str] | None = None) -> list[ClaimedTask]:
        now = time.time()
        st = self._store
        with st.lock:
            st.promote(now)
            heaps = st.ready_of(queues)
            running: collections.Counter[str] | None = None
            out: list[ClaimedTask] = []
            at_limit: list[tuple[_Entry, list[_Entry]]] = []
            while len(out) < limit:
                best: tuple[_Entry, list[_Entry]] | None = None
                for heap in heaps:
                    entry = st.head(heap)
                    if entry is not None and (best is None or entry < best[0]):
                        best = (entry, heap)
                if best is None:
                    break
                heapq.heappop(best[1])
                r = st.rows[best[0][4]]
                if r.max_concurrency is not None:
                    if running is None:
                        running = collections.Counter(
                            x.name for x in st.rows.values() if x.status is TaskStatus.RUNNING)
                    if running[r.name] >= r.max_concurrency:
                        at_limit.append(best)  # stays pending: back into the index below
                        continue
                    running[r.name] += 1
                r.status = TaskStatus.RUNNING
                r.worker_id = worker_id
                r.attempts += 1
                r.started_at = now
                r.heartbeat_at = now
                r.pid = pid
                r.progress = 0
                out.append(ClaimedTask(r.id, r.name, r.args, r.kwargs, r.attempts,
                                       r.max_attempts, r.queue, r.trace_context))
            for entry, heap in at_limit:
                heapq.heappush(heap, entry)
            return out

    async def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        with self._store.lock:
            earliest = self._store.earliest_pending(queues)
        return None if earliest is None else earliest - time.time()

    async def enqueue_tick(self, schedule: str, tick: float, task: NewTask) -> bool:
        st = self._store
        with st.lock:
            last = st.ticks.get(schedule)
            st.ticks[schedule] = max(tick, last or tick)
            if last is None or last >= tick:
                return False
            self._insert([task])
            st.wake()
            return True

    async def purge(self, older_than: float, batch_size: int = 1000) -> int:
        cutoff = time.time() - older_than
        with self._store.lock:
            doomed = [r.id for r in self._store.rows.values()
                      if r.status in FINAL_STATUSES and r.finished_at is not None and r.finished_at < cutoff]
            for tid in doomed:
                del self._store.rows[tid]
                self._store.logs.pop(tid, None)
        return len(doomed)

    async def finish(self, outcomes: Sequence[Outcome]) -> list[str]:
        now = time.time()
        applied = []
        st = self._store
        with st.lock:
            for out in outcomes:
                row = st.rows.get(out.task_id)
                if (row is None or row.status is not TaskStatus.RUNNING or row.worker_id != out.worker_id
                        or row.attempts != out.attempt):
                    continue
                if _apply_outcome(row, out, now):
                    st.push(row, now)
                applied.append(out.task_id)
            if any(o.kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE) for o in outcomes):
                st.wake()
        return applied

    async def update_running(self, updates: Sequence[RunningUpdate], worker_id: str) -> None:
        with self._store.lock:
            for u in updates:
                row = self._store.rows.get(u.task_id)
                if row is None or row.status is not TaskStatus.RUNNING or row.worker_id != worker_id:
                    continue
                if u.progress is not None:
                    row.progress = u.progress
                if u.pid is not None:
                    row.pid = u.pid
                if u.message is not None:
                    row.status_message = u.message
                if u.started_ago is not None:
                    row.started_at = time.time() - u.started_ago

    async def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> list[str]:
        now = time.time()
        held = []
        with self._store.lock:
            for tid in task_ids:
                row = self._store.rows.get(tid)
                if row is not None and row.status is TaskStatus.RUNNING and row.worker_id == worker_id:
                    row.heartbeat_at = now
                    held.append(tid)
        return held

    async def requeue_stalled(self, timeout: float, max_rescues: int) -> list[str]:
        now = time.time()
        cutoff = now - timeout
        done = []
        st = self._store
        with st.lock:
            for row in st.rows.values():
                if row.status is not TaskStatus.RUNNING or (row.heartbeat_at or 0) >= cutoff:
                    continue
                lost = json.loads(worker_lost_error(timeout, max_rescues))
                _add_error(row, json.dumps({**lost, "attempt": row.attempts}))
                if row.cancel_requested:
                    row.status = TaskStatus.CANCELLED
                    row.finished_at = now
                elif row.rescues < max_rescues:
                    row.status = TaskStatus.PENDING
                    row.max_attempts += 1
                    row.run_at = now
                    st.push(row, now)
                else:
                    row.status = TaskStatus.FAILED
                    row.finished_at = now
                row.rescues += 1
                row.worker_id = None
                row.cancel_requested = False
                done.append(row.id)
            if done:
                st.wake()
        return done

    async def cancel_requested(self, task_ids: Sequence[str]) -> list[str]:
        with self._store.lock:
            return [t for t in task_ids if (r := self._store.rows.get(t)) is not None and r.cancel_requested]

    async def get(self, task_id: str) -> TaskRecord | None:
        with self._store.lock:
            row = self._store.rows.get(task_id)
            return None if row is None else _record(row)

    async def cancel(self, task_id: str) -> bool:
        with self._store.lock:
            row = self._store.rows.get(task_id)
            if row is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            if row.status in FINAL_STATUSES:
                return False
            if row.status is TaskStatus.PENDING:
                row.status = TaskStatus.CANCELLED
                row.finished_at = time.time()
            else:
                row.cancel_requested = True
            return True

    async def list_tasks(self, *, status: str | None = None, name: str | None = None,
                         queue: str | None = None, limit: int = 50,
                         before: str | None = None) -> list[TaskRecord]:
        with self._store.lock:
            rows = self._store.rows
            if before is not None and before not in rows:
                raise TaskNotFound(f"no task with id {before!r} (the 'before' cursor)")
            cursor = rows[before].seq if before is not None else None
            picked = [r for r in rows.values()
                      if (status is None or r.status.value == status) and (name is None or r.name == name)
                      and (queue is None or r.queue == queue) and (cursor is None or r.seq < cursor)]
            picked.sort(key=lambda r: -r.seq)
            return [_record(r) for r in picked[:limit]]

    async def retry(self, task_id: str) -> bool:
        with self._store.lock:
            row = self._store.rows.get(task_id)
            if row is None:
                raise TaskNotFound(f"no task with id {task_id!r}")
            if row.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                return False
            row.status = TaskStatus.PENDING
            row.run_at = time.time()
            row.finished_at = row.worker_id = row.heartbeat_at = row.status_message = None
            row.cancel_requested = False
            row.max_attempts = row.attempts + 1
            row.progress = 0
            self._store.push(row, row.run_at)
            self._store.wake()
            return True

    async def stats(self) -> dict[str, Any]:
        now = time.time()
        with self._store.lock:
            rows = list(self._store.rows.values())
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            counts[(r.queue, r.status.value)] = counts.get((r.queue, r.status.value), 0) + 1
        due = [r.run_at for r in rows if r.status is TaskStatus.PENDING and r.run_at <= now]
        recent: dict[str, int] = {}
        for r in rows:
            if r.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) and (r.finished_at or 0) >= now - 60:
                recent[r.status.value] = recent.get(r.status.value, 0) + 1
        return stats_dict([(q, st, n) for (q, st), n in counts.items()],
                          now - min(due) if due else None, recent)

    async def register_worker(self, info: WorkerInfo) -> None:
        with self._store.lock:
            self._store.workers[info.id] = (info, time.time())

    async def worker_heartbeat(self, worker_id: str, running: int) -> None:
        with self._store.lock:
            entry = self._store.workers.get(worker_id)
            if entry is not None:
                self._store.workers[worker_id] = (replace(entry[0], running=running), time.time())

    async def unregister_worker(self, worker_id: str) -> None:
        with self._store.lock:
            self._store.workers.pop(worker_id, None)

    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        cutoff = time.time() - alive_within
        with self._store.lock:
            return [replace(info, last_heartbeat=utc_from_timestamp(beat))  # type: ignore[arg-type]
                    for info, beat in self._store.workers.values() if beat >= cutoff]

    async def add_logs(self, records: Sequence[LogRecord]) -> None:
        with self._store.lock:
            for r in records:
                self._store.logs.setdefault(r.task_id, []).append(r)

    async def task_logs(self, task_id: str, limit: int = 1000) -> list[LogRecord]:
        with self._store.lock:
            return list(self._store.logs.get(task_id, [])[:limit])

    async def name_counts(self) -> list[tuple[str, str, int, int]]:
        counts: dict[tuple[str, str], list[int]] = {}
        with self._store.lock:
            for r in self._store.rows.values():
                c = counts.setdefault((r.name, r.status.value), [0, 0])
                c[0] += 1
                c[1] += r.attempts > 1
        return [(n, st, c[0], c[1]) for (n, st), c in counts.items()]

    async def durations(self) -> list[tuple[str, int, int, float]]:
        acc: dict[tuple[str, int], list[float]] = {}
        with self._store.lock:
            for r in self._store.rows.values():
                if r.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) and r.started_at and r.finished_at:
                    d = r.finished_at - r.started_at
                    a = acc.setdefault((r.name, bucket_index(d)), [0, 0.0])
                    a[0] += 1
                    a[1] += d
        return [(n, b, int(a[0]), a[1]) for (n, b), a in acc.items()]

    async def throughput(self, window: float, bucket: float) -> list[tuple[float, int, int]]:
        since = time.time() - window
        acc: dict[float, list[int]] = {}
        with self._store.lock:
            for r in self._store.rows.values():
                if r.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) and (r.finished_at or 0) >= since:
                    b = (r.finished_at // bucket) * bucket  # type: ignore[operator]
                    a = acc.setdefault(b, [0, 0])
                    a[r.status is TaskStatus.FAILED] += 1
        return [(b, a[0], a[1]) for b, a in sorted(acc.items())]

    async def wait_for_work(self, timeout: float) -> None:
        event = self._event
        if event is None:
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()


def _add_error(row: _Row, error_json: str) -> None:
    row.error = error_json
    row.errors = json.dumps([*json.loads(row.errors), json.loads(error_json)])


def _record(row: _Row) -> TaskRecord:
    return record_from_row(vars(row))
