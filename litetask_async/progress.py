"""TaskProgress: the handle a task uses to report how far it got."""

from __future__ import annotations

from collections.abc import Callable

from .records import storable_text


class TaskProgress:
    """Injected into a task that has a parameter annotated ``TaskProgress``.

    ``progress.set(40)`` stores 40 % as the task's ``progress``. Writes are coalesced by the worker,
    so calling it often is cheap. Works the same in async tasks and in process-pool tasks.

    For example::

        @app.task
        def import_rows(path: str, progress: TaskProgress) -> int:
            rows = load(path)
            for i, row in enumerate(rows):
                save(row)
                progress.set(100 * (i + 1) / len(rows), f"row {i + 1} of {len(rows)}")
            return len(rows)

    Callers do not pass it: ``import_rows.delay("data.csv")``. Annotate it
    ``TaskProgress | None = None`` to keep type checkers quiet at call sites.
    """

    __slots__ = ("_sink", "_value", "task_id")

    def __init__(self, task_id: str, sink: Callable[[str, int, str | None], None]) -> None:
        self.task_id = task_id
        self._sink = sink
        self._value = 0

    @property
    def value(self) -> int:
        """The last percentage set by this task (0 to 100)."""
        return self._value

    def set(self, percentage: float, message: str | None = None) -> None:
        """Record ``percentage`` (clamped to 0..100) as the task's progress, and ``message`` (if
        given) as its latest status line (``rec.status_message``)."""
        try:
            pct = int(max(0, min(100, percentage)))
        except TypeError:
            raise TypeError(f"progress must be a number from 0 to 100, got {percentage!r}") from None
        if message is not None:
            message = storable_text(str(message)[:1000])
        if pct != self._value or message is not None:
            self._value = pct
            self._sink(self.task_id, pct, message)

    def __repr__(self) -> str:
        return f"TaskProgress(task_id={self.task_id!r}, value={self._value})"
