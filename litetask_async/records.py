"""The task record users read back, and the small value types the brokers exchange."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class TaskStatus(enum.StrEnum):
    """Lifecycle of a task: pending -> running -> completed | failed | cancelled.

    A running task may also go back to pending (retry, rescue after its worker vanished,
    or graceful shutdown). The three final states are never left by the worker; only an
    operator's ``app.retry()`` puts a failed or cancelled task back to pending.

    A ``str`` enum: ``TaskStatus.FAILED == "failed"``. For example::

        failed = await app.list_tasks(status=TaskStatus.FAILED)
        rec.status.is_final                         # True for completed, failed, cancelled
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in FINAL_STATUSES

    def __str__(self) -> str:
        return self.value


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def utc_from_timestamp(ts: float | None) -> datetime | None:
    """Seconds since the epoch to an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def storable_text(text: str) -> str:
    """Free text (an error, a log line, a status line) as every broker can store it and every
    reader print it: NUL (refused by PostgreSQL) and lone surrogates (not UTF-8, as in
    ``os.listdir()`` names) are kept as visible escapes instead of failing the write or a read."""
    text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True)
class TaskRecord:
    """Everything stored about one task.

    ``result`` is the JSON-decoded return value (a returned model is stored as its dict).
    ``error`` is None or a dict with ``type``, ``message``, ``traceback``, ``attempt`` and ``at``
    (ISO time); ``errors`` lists the error of every attempt that failed, oldest first.
    Timestamps are aware UTC datetimes.

    For example::

        rec = await app.get_task(task_id)           # None for an unknown id
        if rec is not None and rec.is_final:
            print(rec.status, rec.result, rec.error)
        elif rec is not None:
            print(f"{rec.status}: {rec.progress}% {rec.status_message or ''}")
    """

    id: str
    name: str
    status: TaskStatus
    progress: int
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    pid: int | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 1
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    run_at: datetime | None = None
    unique_key: str | None = None
    status_message: str | None = None

    @property
    def is_final(self) -> bool:
        """True once the task is completed, failed or cancelled."""
        return self.status.is_final


@dataclass(slots=True)
class NewTask:
    """A task about to be stored: payloads are already JSON text. (Not frozen: a frozen
    dataclass's ``__init__`` costs five times as much, and one is built per enqueued task.)"""

    id: str
    name: str
    args_json: str
    kwargs_json: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 1
    countdown: float | None = None  # seconds from now, on the broker's clock
    eta: float | None = None  # absolute time, seconds since the epoch
    unique_key: str | None = None
    max_concurrency: int | None = None
    trace_context: str | None = None  # W3C headers of the enqueuing span, JSON (tracing.py)


@dataclass(slots=True)
class ClaimedTask:
    """A task a worker has just claimed (status running, attempts already incremented).

    Payloads stay raw JSON text so that a payload that cannot be decoded fails only that task.
    (Not frozen, as NewTask: one is built per task run, and a frozen ``__init__`` costs 2.1 us
    against 0.8.)
    """

    id: str
    name: str
    args_json: str
    kwargs_json: str
    attempts: int
    max_attempts: int
    queue: str = "default"
    trace_context: str | None = None


class OutcomeKind(enum.StrEnum):
    """What a worker reports when it is done with a claimed task."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRY = "retry"  # back to pending after an error, runs again at run_at
    RELEASE = "release"  # back to pending, interrupted by shutdown; the attempt is given back


@dataclass(slots=True)
class Outcome:
    """The end of one attempt, as written back by the worker. (Not frozen: see ClaimedTask.)"""

    task_id: str
    worker_id: str
    attempt: int
    kind: OutcomeKind
    result_json: str | None = None
    error_json: str | None = None
    pid: int | None = None
    retry_delay: float | None = None  # seconds from now (the broker's clock) for RETRY


@dataclass(frozen=True)
class WorkerInfo:
    """A worker that is (or recently was) alive: what ``app.workers()`` returns."""

    id: str
    hostname: str
    pid: int
    queues: list[str] | None
    concurrency: int
    running: int
    started_at: datetime
    last_heartbeat: datetime


@dataclass(frozen=True)
class LogRecord:
    """One ``logging`` record emitted inside a task, as stored with it."""

    task_id: str
    attempt: int
    at: datetime
    level: str
    message: str


#: Every due time (``run_at``) lies in ``[EARLIEST_RUN_AT, LATEST_RUN_AT)`` on every broker:
#: records are read back into Python datetimes, which end with the year 9999 (a countdown, eta
#: or retry delay beyond that would store a row nobody can read).
EARLIEST_RUN_AT = datetime(1, 1, 1, tzinfo=UTC)
LATEST_RUN_AT = datetime(9000, 1, 1, tzinfo=UTC)
EARLIEST_RUN_AT_TS = EARLIEST_RUN_AT.timestamp()
LATEST_RUN_AT_TS = LATEST_RUN_AT.timestamp()
