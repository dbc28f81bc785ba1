"""Tasks for the tracing tests; with LITETASK_TEST_SPANS set, every process that imports this
module (the worker, its pool processes, the producer) exports its finished spans to that file,
one JSON line each."""

from __future__ import annotations

import json
import os

from litetask_async import LiteTask

app = LiteTask(os.environ.get("LITETASK_URL", "sqlite:///otel.db"))

SPANS = os.environ.get("LITETASK_TEST_SPANS")

if SPANS:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        """One JSON line a span, appended in one write (processes share the file)."""

        def export(self, spans: object) -> SpanExportResult:
            for s in spans:  # type: ignore[attr-defined]
                assert isinstance(s, ReadableSpan) and s.context is not None
                line = json.dumps({
                    "name": s.name, "kind": s.kind.name, "pid": os.getpid(),
                    "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
                    "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                    "attributes": dict(s.attributes or {}), "status": s.status.status_code.name,
                    "events": [e.name for e in s.events],
                }) + "\n"
                fd = os.open(SPANS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def _body(n: int) -> int:
    from opentelemetry import trace

    with trace.get_tracer("tests.otel_app").start_as_current_span("body", attributes={"n": n}):
        return n * 2


@app.task(name="otel.traced_async")
async def traced_async(n: int) -> int:
    return _body(n)


@app.task(name="otel.traced_pool")
def traced_pool(n: int) -> int:
    return _body(n)


@app.task(name="otel.fails_once", retries=1, retry_backoff=0.05)
async def fails_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("first attempt fails")
    return "ok"
