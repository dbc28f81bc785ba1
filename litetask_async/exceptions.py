"""Errors raised by litetask_async.

All of them derive from one root, :class:`LiteTaskError`::

    LiteTaskError
    ├── ConfigurationError         bad URL, unknown broker scheme, bad option
    ├── SerializationError         (also a TypeError) arguments or results that are not JSON
    ├── TaskNotFound               (also a KeyError) no task with this id
    ├── BrokerUnavailable          the database cannot be reached (after retries)
    ├── WorkerError                the worker cannot go on
    └── Retry                      raised by a task to ask for another attempt

Errors recorded on a task (not raised to callers) use these names as ``error["type"]``:
``TaskTimeout``, ``WorkerLost``, ``ProcessDied``, ``UnknownTask``, ``PayloadError``.
"""

from __future__ import annotations

import traceback


class LiteTaskError(Exception):
    """Root of every error raised by litetask_async."""


class ConfigurationError(LiteTaskError, ValueError):
    """The app or broker was configured wrongly (for example an unknown URL scheme)."""


class SerializationError(LiteTaskError, TypeError):
    """Task arguments or a result cannot be stored as JSON.

    Raised by ``delay``/``adelay`` before anything is stored (for example an argument that is a
    ``set`` or a NaN); a result that cannot be stored ends the task ``failed`` with this type.
    """


class TaskNotFound(LiteTaskError, KeyError):
    """No task with the given id exists.

    Raised by ``wait``, ``cancel``, ``retry``, ``task_logs`` and a ``before=`` cursor;
    ``get_task`` returns None instead. For example::

        try:
            await app.cancel(task_id)
        except TaskNotFound:
            ...  # a 404 in a web handler
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class BrokerUnavailable(LiteTaskError, ConnectionError):
    """The broker's database could not be reached.

    Raised by ``delay``/``adelay`` instead of hanging: at once when PostgreSQL refuses
    connections, after the busy timeout when an SQLite file stays locked. Workers do not stop on
    it: they back off and retry.
    """


class WorkerError(LiteTaskError, RuntimeError):
    """The worker cannot go on (for example a side task crashed)."""


class TaskTimeout(LiteTaskError, TimeoutError):
    """A task ran longer than its ``timeout``; recorded as the task's error."""


class Retry(LiteTaskError):
    """Raise inside a task to ask for another attempt after ``delay`` seconds.

    The request is granted while the task has attempts left (``retries=N``); it counts as an
    attempt and is kept in the task's ``errors`` with its ``reason``. Without ``delay`` the task's
    usual backoff applies. Once attempts are used up the task ends ``failed``.

    For example::

        @app.task(retries=5)
        async def poll(job_id: str) -> str:
            status = await fetch_status(job_id)
            if status != "done":
                raise Retry(f"job {job_id} is {status}", delay=10)
            return status
    """

    def __init__(self, reason: str = "the task asked to be retried", delay: float | None = None) -> None:
        if delay is not None and not 0 <= delay < float("inf"):  # also refuses NaN
            raise ValueError(f"Retry delay must be a finite number of seconds >= 0 (or None), got {delay!r}")
        super().__init__(reason)
        self.reason = reason
        self.delay = delay

    def __reduce__(self) -> tuple[object, ...]:
        return (Retry, (self.reason, self.delay))


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when the exception's own ``__str__`` fails."""
    try:
        return str(exc)
    except BaseException as inner:  # any failure of user code here gets the placeholder
        return f"<exception str() failed: {type(inner).__name__}>"


def format_exception(exc: BaseException) -> str:
    """The traceback text of ``exc``, even when its ``__str__`` or ``__repr__`` fails."""
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException:  # traceback of a pathological exception: keep the frames
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: {safe_str(exc)}\n"
