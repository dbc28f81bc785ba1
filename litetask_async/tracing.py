"""OpenTelemetry traces that follow a task from its enqueue to each attempt.

Optional: with ``pip install "litetask_async[otel]"`` (the OpenTelemetry API) and an SDK
configured by the application, enqueueing creates a PRODUCER span and stores its W3C trace
context with the task; each attempt runs inside a CONSUMER span whose parent is that context,
on the worker's event loop and, for plain ``def`` tasks, in the pool process too (spans the task
body starts there are children of the attempt). Retries are new CONSUMER spans of the same trace;
a failed attempt records its exception and sets the span's status to ERROR.

Attributes follow OpenTelemetry's messaging conventions: ``messaging.system`` = ``litetask``,
``messaging.operation.type`` (``send`` / ``process``), ``messaging.destination.name`` (the queue),
``messaging.message.id`` (the task id), plus ``litetask.task.name`` and ``litetask.task.attempt``.

Without the API installed, or with no SDK configured (the API's default no-op provider), every
function here returns at once: no span is made, nothing is stored with the task.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .records import ClaimedTask, NewTask

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
except ImportError:  # the [otel] extra is not installed
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span

SYSTEM = "litetask"


# The API's get_tracer_provider() looks the environment up on every call until a provider is
# set (a micro-second, paid per enqueue and per task): while its global is still None and the
# environment named no provider when we were imported, nothing can be recording.
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def enabled() -> bool:
    """True when spans would be recorded: the API is installed and an SDK provider is set."""
    if trace is None:
        return False
    if getattr(trace, "_TRACER_PROVIDER", False) is None and not _PROVIDER_FROM_ENV:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider))


def _tracer() -> Any:
    from . import __version__

    return trace.get_tracer("litetask_async", __version__)


def _carrier() -> str | None:
    """The current context as W3C headers (traceparent, tracestate), JSON-encoded."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return json.dumps(headers, separators=(",", ":")) if headers else None


def publishing(tasks: Sequence[NewTask]) -> AbstractContextManager[Sequence[NewTask]]:
    """A PRODUCER span around storing ``tasks``; yields them with its trace context attached.
    Without tracing a plain ``nullcontext`` (no generator per call: enqueue is a hot path)."""
    if not tasks or not enabled():
        return contextlib.nullcontext(tasks)
    return _publishing(tasks)


@contextlib.contextmanager
def _publishing(tasks: Sequence[NewTask]) -> Iterator[Sequence[NewTask]]:
    first = tasks[0]
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue",
        "messaging.destination.name": first.queue,
        "litetask.task.name": first.name,
    }
    if len(tasks) == 1:
        attributes["messaging.message.id"] = first.id
    else:
        attributes["messaging.batch.message_count"] = len(tasks)
    with _tracer().start_as_current_span(f"send {first.queue}", kind=SpanKind.PRODUCER,
                                         attributes=attributes) as span:
        carrier = _carrier()
        try:
            yield [replace(t, trace_context=carrier) for t in tasks]
        except BaseException as exc:
            _failed(span, exc, type(exc).__name__, str(exc))
            raise


def processing(task: ClaimedTask) -> AbstractContextManager[None]:
    """A CONSUMER span for one attempt, child of the context stored when it was enqueued.
    Without tracing a plain ``nullcontext`` (no generator per task)."""
    if not enabled():
        return contextlib.nullcontext()
    return _processing(task)


@contextlib.contextmanager
def _processing(task: ClaimedTask) -> Iterator[None]:
    parent = None
    if task.trace_context:
        with contextlib.suppress(ValueError, TypeError):
            parent = propagate.extract(json.loads(task.trace_context))
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": task.queue,
        "messaging.message.id": task.id,
        "litetask.task.name": task.name,
        "litetask.task.attempt": task.attempts,
    }
    with _tracer().start_as_current_span(f"process {task.queue}", context=parent, kind=SpanKind.CONSUMER,
                                         attributes=attributes, record_exception=False,
                                         set_status_on_exception=False):
        yield


def failed(exc: BaseException | None, type_name: str, message: str) -> None:
    """Mark the current attempt's span failed (records the exception, status ERROR)."""
    if not enabled():
        return
    _failed(trace.get_current_span(), exc, type_name, message)


def _failed(span: Span, exc: BaseException | None, type_name: str, message: str) -> None:
    if exc is not None:
        span.record_exception(exc)
    span.set_attribute("error.type", type_name)
    span.set_status(Status(StatusCode.ERROR, f"{type_name}: {message}"[:500]))


def current_carrier() -> str | None:
    """The current context to hand to a pool process (None when tracing is off)."""
    return _carrier() if enabled() else None


@contextlib.contextmanager
def attached(carrier: str | None) -> Iterator[None]:
    """In a pool process: make the attempt's context current while the task body runs."""
    if carrier is None or trace is None:
        yield
        return
    try:
        ctx = propagate.extract(json.loads(carrier))
    except (ValueError, TypeError):
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)
