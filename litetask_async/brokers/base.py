"""The broker interface: the only thing a storage backend implements.

A broker stores tasks and moves them through their states atomically. It knows nothing of
functions, serialisation or execution; the worker and the app sit above it. Every method that
takes a sequence works on many tasks in one round trip.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..exceptions import format_exception, safe_str
from ..records import (
    LATEST_RUN_AT_TS,
    ClaimedTask,
    LogRecord,
    NewTask,
    Outcome,
    TaskRecord,
    TaskStatus,
    WorkerInfo,
    storable_text,
    utc_from_timestamp,
)
from ..serialization import loads


@dataclass(frozen=True)
class RunningUpdate:
    """Progress and/or pid of a running task (None leaves the stored value as it is).

    ``started_ago``: the task's body started this many seconds ago (a pool task starts when a
    process picks it up, after its claim); the broker stores it as ``started_at`` on its clock.
    """

    task_id: str
    progress: int | None = None
    pid: int | None = None
    message: str | None = None
    started_ago: float | None = None


class Broker(abc.ABC):
    """Storage of tasks. One instance serves one event loop; instances may share process-wide state."""

    #: Seconds between polls when the broker cannot push wake-ups across processes.
    poll_interval: float = 0.5

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[NewTask]) -> list[str]:
        """Store new pending tasks, all or none; returns their ids in order.

        A task whose ``unique_key`` is held by a pending or running task is not stored: that
        task's id is returned in its place.
        """

    @abc.abstractmethod
    async def claim(self, worker_id: str, pid: int, limit: int,
                    queues: Sequence[str] | None = None) -> list[ClaimedTask]:
        """Atomically mark up to ``limit`` due pending tasks running for ``worker_id`` and return them.

        Only tasks of ``queues`` (all queues if None). Highest priority first, then enqueue
        order. ``attempts`` is incremented. No task is ever returned to two claimers, and no
        task name with a ``max_concurrency`` gets more running tasks than that, across all
        claimers.
        """

    @abc.abstractmethod
    async def next_due(self, queues: Sequence[str] | None = None) -> float | None:
        """Seconds until the earliest pending task of ``queues`` is due (<= 0: due now), or None."""

    async def clock_offset(self) -> float:
        """Seconds the database's clock is ahead of this machine's (negative: behind).

        Brokers whose times come from this machine's clock (SQLite, memory) return 0. Workers
        add it to the local time where they must agree with the database: periodic ticks and
        log timestamps."""
        return 0.0

    @abc.abstractmethod
    async def enqueue_tick(self, schedule: str, tick: float, task: NewTask) -> bool:
        """Enqueue ``task`` for the periodic ``schedule``'s tick at ``tick`` (epoch seconds) unless
        that tick or a later one was already enqueued; atomic, so exactly one caller wins."""

    @abc.abstractmethod
    async def purge(self, older_than: float, batch_size: int = 1000) -> int:
        """Delete finished tasks (completed, failed, cancelled) that finished more than
        ``older_than`` seconds ago, in batches; returns how many were deleted."""

    @abc.abstractmethod
    async def finish(self, outcomes: Sequence[Outcome]) -> list[str]:
        """Write the end of many attempts. Returns the ids whose outcome was applied.

        An outcome only applies while the task is still running for that worker and attempt; a task
        that was rescued meanwhile, or cancelled and finalised, is left alone.
        """

    async def finish_and_claim(self, outcomes: Sequence[Outcome], worker_id: str, pid: int, limit: int,
                               queues: Sequence[str] | None = None) -> tuple[list[str], list[ClaimedTask]]:
        """:meth:`finish` these outcomes, then :meth:`claim` up to ``limit`` tasks; returns both
        results. The outcomes are stored (durably, as by finish()) before this returns, and
        an error means the claim did not happen. A broker that can do both in one round trip
        (one transaction) overrides this; this default makes two calls."""
        finished = await self.finish(outcomes) if outcomes else []
        claimed = await self.claim(worker_id, pid, limit, queues) if limit > 0 else []
        return finished, claimed

    #: True when :meth:`finish_and_claim` is cheaper than finish() and claim() apart; the worker
    #: then hands the outcomes it has to its next claim instead of writing them on their own.
    combines_finish_and_claim: bool = False

    @abc.abstractmethod
    async def update_running(self, updates: Sequence[RunningUpdate], worker_id: str) -> None:
        """Store progress and pid of tasks running for ``worker_id``."""

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str, task_ids: Sequence[str]) -> list[str]:
        """Mark the given running tasks of ``worker_id`` alive as of now. Returns the ids that
        are still running for that worker; the others were taken up by another worker (rescued
        after a missed heartbeat) or ended meanwhile."""

    @abc.abstractmethod
    async def requeue_stalled(self, timeout: float, max_rescues: int) -> list[str]:
        """Put back running tasks whose heartbeat is older than ``timeout`` seconds.

        Each is rescued by exactly one caller. A task already rescued ``max_rescues`` times is failed
        with a ``WorkerLost`` error instead. Returns the ids that were put back or failed.
        """

    @abc.abstractmethod
    async def cancel_requested(self, task_ids: Sequence[str]) -> list[str]:
        """Which of these running tasks have been asked to cancel."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> TaskRecord | None:
        """Read one task."""

    @abc.abstractmethod
    async def cancel(self, task_id: str) -> bool:
        """Cancel a task: pending ones become cancelled at once, running ones are flagged for their
        worker. Returns False when the task was already final. Raises TaskNotFound."""

    # --- operating it: listing, retrying, stats, workers, logs ---

    @abc.abstractmethod
    async def list_tasks(self, *, status: str | None = None, name: str | None = None,
                         queue: str | None = None, limit: int = 50,
                         before: str | None = None) -> list[TaskRecord]:
        """Newest first; ``before`` is the id of the last task of the previous page (keyset)."""

    @abc.abstractmethod
    async def retry(self, task_id: str) -> bool:
        """Put a failed or cancelled task back to pending with one more attempt allowed.
        False when the task is in another state. Raises TaskNotFound."""

    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Counts by queue and status, oldest due pending age, completed/failed in the last
        minute, live workers (see ``LiteTask.stats``)."""

    @abc.abstractmethod
    async def register_worker(self, info: WorkerInfo) -> None:
        """Record a starting worker (or refresh it)."""

    @abc.abstractmethod
    async def worker_heartbeat(self, worker_id: str, running: int) -> None:
        """The worker is alive with ``running`` tasks."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """A worker stopped cleanly."""

    @abc.abstractmethod
    async def workers(self, alive_within: float) -> list[WorkerInfo]:
        """Workers whose last heartbeat is at most ``alive_within`` seconds old."""

    @abc.abstractmethod
    async def add_logs(self, records: Sequence[LogRecord]) -> None:
        """Store log records of tasks."""

    @abc.abstractmethod
    async def task_logs(self, task_id: str, limit: int = 1000) -> list[LogRecord]:
        """A task's log records, oldest first."""

    @abc.abstractmethod
    async def name_counts(self) -> list[tuple[str, str, int, int]]:
        """(name, status, tasks, tasks with more than one attempt) for every name and status."""

    @abc.abstractmethod
    async def durations(self) -> list[tuple[str, int, int, float]]:
        """(name, bucket index into DURATION_BUCKETS, count, sum of seconds) of finished tasks."""

    @abc.abstractmethod
    async def throughput(self, window: float, bucket: float) -> list[tuple[float, int, int]]:
        """(bucket start, completed, failed) for tasks finished in the last ``window`` seconds."""

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be available, or after ``timeout`` seconds."""


def error_payload(exc: BaseException | None, type_name: str | None = None, message: str | None = None,
                  *, attempt: int | None = None, tb: str | None = None) -> str:
    """The JSON stored as a task's error: type, message, traceback, attempt number and time."""
    if tb is None and exc is not None:
        tb = format_exception(exc)
    if message is None:
        message = safe_str(exc) if exc is not None else ""
    payload: dict[str, Any] = {
        "type": type_name or (type(exc).__name__ if exc is not None else "Error"),
        "message": storable_text(message),
        "traceback": storable_text(tb) if tb else tb,
        "attempt": attempt,
        "at": datetime.now(UTC).isoformat(),
    }
    return json.dumps(payload)


def worker_lost_error(timeout: float, max_rescues: int) -> str:
    """The error recorded when a task's worker vanished (the broker adds the attempt number)."""
    return error_payload(
        None,
        "WorkerLost",
        f"the worker running this attempt stopped heartbeating for {timeout:g}s; the task is "
        f"put back to pending, or failed once it has been taken up again {max_rescues} time(s)",
    )


def record_from_row(row: dict[str, Any]) -> TaskRecord:
    """Build a TaskRecord from a database row with the common column names (epoch-second times)."""
    return TaskRecord(
        id=row["id"], name=row["name"], status=TaskStatus(row["status"]), progress=row["progress"],
        args=_loads_or_raw(row["args"]), kwargs=_loads_or_raw(row["kwargs"]),
        result=None if row["result"] is None else _loads_or_raw(row["result"]),
        error=None if row["error"] is None else _loads_or_raw(row["error"]),
        errors=_loads_or_raw(row.get("errors") or "[]"),
        pid=row["pid"], attempts=row["attempts"],
        created_at=utc_from_timestamp(row["created_at"]),  # type: ignore[arg-type]
        started_at=utc_from_timestamp(row["started_at"]),
        finished_at=utc_from_timestamp(row["finished_at"]),
        queue=row["queue"], priority=row["priority"], max_attempts=row["max_attempts"],
        worker_id=row["worker_id"], heartbeat_at=utc_from_timestamp(row["heartbeat_at"]),
        run_at=utc_from_timestamp(row.get("run_at")), unique_key=row.get("unique_key"),
        status_message=row.get("status_message"),
    )


def _loads_or_raw(text: Any) -> Any:
    """Decode stored JSON; a payload that is not JSON, or nested too deeply to decode at all, is
    returned as the raw text (a record stays readable whatever it holds)."""
    try:
        return loads(text)
    except (TypeError, ValueError, RecursionError):
        return text


def bounded_delay(delay: float | None, now: float) -> float:
    """A retry delay as brokers store it: 0 for none or NaN, and never past ``LATEST_RUN_AT``
    (a long backoff, ``retry_backoff * 2**(attempt-1)``, would otherwise store an unreadable time)."""
    if delay is None or not delay > 0:
        return 0.0
    return min(delay, LATEST_RUN_AT_TS - now)


# scheme://user:password@ -- the password is everything up to the "@", as SQLAlchemy reads it.
_PASSWORD = re.compile(r"^([^:/?#@]+://[^:/?#@]*):[^@]*@")


def redact_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***`` (as SQLAlchemy shows URLs)."""
    return _PASSWORD.sub(r"\1:***@", url, count=1) if isinstance(url, str) else url


def stats_dict(counts: Sequence[tuple[str, str, int]], oldest_pending_age: float | None,
               recent: dict[str, int]) -> dict[str, Any]:
    """The shape of ``LiteTask.stats()``, from (queue, status, count) rows."""
    by_queue: dict[str, dict[str, int]] = {}
    totals = {s.value: 0 for s in TaskStatus}
    for queue, status, n in counts:
        by_queue.setdefault(queue, {s.value: 0 for s in TaskStatus})[status] = int(n)
        totals[status] += int(n)
    return {
        "by_queue": by_queue,
        "totals": totals,
        "oldest_pending_age": oldest_pending_age,
        "completed_last_minute": int(recent.get("completed", 0)),
        "failed_last_minute": int(recent.get("failed", 0)),
    }


def worker_from_row(row: dict[str, Any]) -> WorkerInfo:
    """A WorkerInfo from a database row (epoch-second times, queues as JSON text)."""
    return WorkerInfo(
        id=row["id"], hostname=row["hostname"], pid=row["pid"],
        queues=json.loads(row["queues"]) if row["queues"] else None,
        concurrency=row["concurrency"], running=row["running"],
        started_at=utc_from_timestamp(row["started_at"]),  # type: ignore[arg-type]
        last_heartbeat=utc_from_timestamp(row["last_heartbeat"]),  # type: ignore[arg-type]
    )


def log_from_row(row: dict[str, Any]) -> LogRecord:
    """A LogRecord from a database row (epoch-second time)."""
    return LogRecord(task_id=row["task_id"], attempt=row["attempt"],
                     at=utc_from_timestamp(row["at"]),  # type: ignore[arg-type]
                     level=row["level"], message=row["message"])


#: Upper bounds (seconds) of the task-duration histogram buckets; the last bucket is +Inf.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def bucket_case(expr: str) -> str:
    """SQL ``CASE`` giving the bucket index of a duration expression (same for both databases)."""
    whens = " ".join(f"WHEN {expr} <= {b!r} THEN {i}" for i, b in enumerate(DURATION_BUCKETS))
    return f"CASE {whens} ELSE {len(DURATION_BUCKETS)} END"


def bucket_index(seconds: float) -> int:
    for i, b in enumerate(DURATION_BUCKETS):
        if seconds <= b:
            return i
    return len(DURATION_BUCKETS)
