"""OpenTelemetry: one trace from a web request through enqueue to the task body, across a real
worker process and its pool processes (every process exports its spans to one file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from litetask_async import LiteTask, TaskStatus
from tests.acceptance.helpers import ROOT, wait_until

pytestmark = pytest.mark.slow

PRODUCER = textwrap.dedent("""
    import asyncio, sys
    import httpx
    from fastapi import FastAPI, Request
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind
    from tests.otel_app import app as tasks, fails_once, traced_async, traced_pool

    api = FastAPI()

    @api.middleware("http")
    async def server_span(request: Request, call_next):
        # what an instrumentation does (recent FastAPI versions also make spans of their own,
        # which then sit below this one)
        with trace.get_tracer("web").start_as_current_span(f"{request.method} {request.url.path}",
                                                           kind=SpanKind.SERVER):
            return await call_next(request)

    @api.post("/go")
    async def go() -> dict[str, str]:
        return {"async": await traced_async.adelay(21), "pool": await traced_pool.adelay(4),
                "retried": await fails_once.adelay(sys.argv[1])}

    async def main() -> None:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
            ids = (await client.post("/go")).json()
        print(ids["async"], ids["pool"], ids["retried"])
        await tasks.aclose()

    asyncio.run(main())
""")


def _spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize("broker", ["sqlite", "postgres"])
def test_one_trace_from_the_request_to_the_task_body(tmp_path: Path, broker: str,
                                                     request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'otel.db'}" if broker == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    spans_file = tmp_path / "spans.jsonl"
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT), "LITETASK_TEST_SPANS": str(spans_file)}
    out = subprocess.run([sys.executable, "-c", PRODUCER, str(tmp_path / "marker")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids = dict(zip(("async", "pool", "retried"), out.stdout.split(), strict=True))
    worker = subprocess.Popen([sys.executable, "-m", "litetask_async.cli", "worker", "tests.otel_app:app",
                               "--concurrency", "4", "--processes", "1"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    app = LiteTask(url)
    try:
        wait_until(lambda: all((r := app.get_task_sync(i)) is not None and r.is_final for i in ids.values()),
                   60, "the three tasks finished")
        recs = {k: app.get_task_sync(i) for k, i in ids.items()}
    finally:
        app.close()
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert all(r is not None and r.status is TaskStatus.COMPLETED for r in recs.values()), (recs, err[-2000:])
    spans = _spans(spans_file)
    by_id = {s["span_id"]: s for s in spans}
    [server] = [s for s in spans if s["kind"] == "SERVER" and s["parent_id"] is None]

    def root(span: dict[str, Any]) -> dict[str, Any]:
        while span["parent_id"] is not None:
            span = by_id[span["parent_id"]]
        return span

    producers = [s for s in spans if s["kind"] == "PRODUCER"]
    consumers = [s for s in spans if s["kind"] == "CONSUMER"]
    bodies = [s for s in spans if s["name"] == "body"]
    assert len(producers) == 3 and len(consumers) == 4 and len(bodies) == 2, [s["name"] for s in spans]
    assert {s["trace_id"] for s in spans} == {server["trace_id"]}, "one trace for all of it"
    for p in producers:
        assert root(p) is server and p["name"] == "send default"
        assert p["attributes"]["messaging.system"] == "litetask"
        assert p["attributes"]["messaging.operation.type"] == "send"
    for kind in ("async", "pool"):
        [consumer] = [c for c in consumers if c["attributes"]["messaging.message.id"] == ids[kind]]
        parent = by_id[consumer["parent_id"]]
        assert parent["kind"] == "PRODUCER" and parent["attributes"]["messaging.message.id"] == ids[kind]
        assert consumer["attributes"]["messaging.destination.name"] == "default"
        assert consumer["attributes"]["litetask.task.attempt"] == 1 and consumer["status"] == "UNSET"
        [body] = [b for b in bodies if b["parent_id"] == consumer["span_id"]]
        assert root(body) is server
        assert (body["pid"] == consumer["pid"]) is (kind == "async")  # pool: in its own process
    retried = sorted((c for c in consumers if c["attributes"]["messaging.message.id"] == ids["retried"]),
                     key=lambda c: c["attributes"]["litetask.task.attempt"])
    assert [c["attributes"]["litetask.task.attempt"] for c in retried] == [1, 2]
    assert retried[0]["status"] == "ERROR" and "exception" in retried[0]["events"]
    assert retried[0]["attributes"]["error.type"] == "ValueError" and retried[1]["status"] == "UNSET"
    assert retried[0]["parent_id"] == retried[1]["parent_id"]  # both children of the one enqueue


def test_no_sdk_no_spans_and_no_context_stored(tmp_path: Path) -> None:
    """Without an SDK configured nothing is recorded and nothing is stored with the task."""
    from litetask_async import tracing

    assert not tracing.enabled()
    app = LiteTask(f"sqlite:///{tmp_path / 'plain.db'}")
    t = app.task(name="plain")(lambda: None)
    try:
        tid = t.delay()
        assert app.get_task_sync(tid) is not None
    finally:
        app.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "plain.db") as conn:
        assert conn.execute("SELECT trace_context FROM litetask_tasks").fetchall() == [(None,)]
