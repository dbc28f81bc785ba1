"""The web dashboard and the Prometheus metrics, on every broker, through the ASGI interface
(httpx's ASGITransport: the dashboard runs on the test's event loop, beside a real worker)."""

from __future__ import annotations

import asyncio
import html
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from litetask_async import LiteTask, TaskStatus
from litetask_async.brokers.base import DURATION_BUCKETS
from litetask_async.dashboard.web import fmt_seconds, throughput_chart
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
XSS = "<script>alert(1)</script>"
ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def client(asgi: Any, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=asgi, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as c:
        yield c


def linked_task_ids(page: str) -> list[str]:
    """Task ids linked from a page, in order, each once."""
    seen: dict[str, None] = {}
    for tid in re.findall(r'href="[^"]*/tasks/([0-9a-f]{32})"', page):
        seen.setdefault(tid, None)
    return list(seen)


def next_link(page: str) -> str | None:
    m = re.search(r'id="next-page" rel="next" href="([^"]+)"', page)
    return html.unescape(m.group(1)) if m else None


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_pages_render(app: LiteTask) -> None:
    t = jobs.register(app)
    ok = await t["aadd"].adelay(2, 3)
    bad = await t["fail_async"].adelay("it broke")
    logged = await t["logs_async"].adelay(2)
    pending = await t["aadd"].configure(queue="later", countdown=3600).adelay(1, 1)
    dash = app.dashboard(token=TOKEN)
    async with client(dash) as c, running_worker(app) as w:
        for tid in (ok, bad, logged):
            await app.wait(tid, 10)
        await asyncio.sleep(0.3)  # a worker heartbeat
        r = await c.get("/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert "Overview" in r.text and 'id="throughput"' in r.text
        assert re.search(r'id="stat-completed">2<', r.text) and re.search(r'id="stat-failed">1<', r.text)
        assert re.search(r'id="stat-pending">1<', r.text) and re.search(r'id="stat-workers">1<', r.text)
        assert "tests.jobs.aadd" in r.text and ">later<" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        # the detail page of a failed task: error, traceback, errors by attempt
        r = await c.get(f"/tasks/{bad}")
        assert r.status_code == 200
        assert "ValueError" in r.text and "it broke" in r.text and "Traceback" in r.text
        assert 'id="errors"' in r.text and 'id="retry-button"' in r.text and 'id="cancel-button"' not in r.text
        assert "data-live-url" not in r.text  # final: no polling
        # completed: the result; logs and the status line
        r = await c.get(f"/tasks/{ok}")
        assert 'id="result">5</pre>' in r.text and "completed" in r.text
        r = await c.get(f"/tasks/{logged}")
        assert "async step 1" in r.text and "half way" in r.text
        # a pending task is polled live and can be cancelled
        r = await c.get(f"/tasks/{pending}")
        assert f'data-live-url="/tasks/{pending}/live"' in r.text and 'id="cancel-button"' in r.text
        live = (await c.get(f"/tasks/{pending}/live")).json()
        assert live["status"] == "pending" and live["progress"] == 0 and live["final"] is False
        r = await c.get("/workers")
        assert r.status_code == 200 and w.id in r.text
        r = await c.get("/tasks")
        assert set(linked_task_ids(r.text)) == {ok, bad, logged, pending}
        r = await c.get("/static/dashboard.js")
        assert r.status_code == 200 and "data-live-url" in r.text
    async with client(dash) as c:
        r = await c.get("/tasks/" + "0" * 32)
        assert r.status_code == 404 and "Not found" in r.text
        assert (await c.get("/tasks/" + "0" * 32 + "/live")).status_code == 404
        assert (await c.get("/no/such/page")).status_code == 404
        assert (await c.get(f"/tasks/{pending}/cancel")).status_code == 405
        r = await c.get("/workers")
        assert "No worker has sent a heartbeat" in r.text


async def test_live_progress_json_moves(app: LiteTask) -> None:
    t = jobs.register(app)
    tid = await t["progress_steps"].adelay(10, 0.1)
    async with client(app.dashboard()) as c, running_worker(app):
        seen: list[int] = []
        messages: set[str] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            d = (await c.get(f"/tasks/{tid}/live")).json()
            seen.append(d["progress"])
            messages.add(d["status_message"] or "")
            if d["final"]:
                break
            await asyncio.sleep(0.05)
    assert d["status"] == "completed" and seen[-1] == 100
    assert len({p for p in seen if 0 < p < 100}) >= 3, seen  # several intermediate values
    assert seen == sorted(seen) and "step 10 of 10" in messages


async def test_filters_and_keyset_pages(app: LiteTask) -> None:
    t = jobs.register(app)
    ids = [await t["aadd"].configure(queue="q1" if i % 2 else "q2").adelay(i, i) for i in range(7)]
    fail = await t["fail_async"].adelay("x")
    async with running_worker(app):
        for tid in [*ids, fail]:
            await app.wait(tid, 10)
    newest_first = [fail, *reversed(ids)]
    async with client(app.dashboard()) as c:
        r = await c.get("/tasks", params={"status": "failed"})
        assert linked_task_ids(r.text) == [fail]
        assert '<option value="failed" selected>' in r.text
        r = await c.get("/tasks", params={"queue": "q1"})
        assert linked_task_ids(r.text) == [ids[5], ids[3], ids[1]]
        r = await c.get("/tasks", params={"name": "tests.jobs.aadd", "status": "completed"})
        assert linked_task_ids(r.text) == list(reversed(ids))
        r = await c.get("/tasks", params={"name": "no.such.task"})
        assert linked_task_ids(r.text) == [] and "No tasks match" in r.text
        # keyset pages of 3, following the "older" links to the end
        pages, url = [], "/tasks?limit=3"
        while url is not None:
            r = await c.get(url)
            assert r.status_code == 200
            pages.append(linked_task_ids(r.text))
            url = next_link(r.text)
            assert url is None or "before=" in url
        assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:8]]
        # filters are kept across pages
        r = await c.get("/tasks", params={"queue": "q2", "limit": 2})
        nxt = next_link(r.text)
        assert nxt is not None and "queue=q2" in nxt and "limit=2" in nxt
        r = await c.get(nxt)
        assert linked_task_ids(r.text) == [ids[2], ids[0]] and next_link(r.text) is None
        assert (await c.get("/tasks", params={"status": "nonsense"})).status_code == 400
        assert (await c.get("/tasks", params={"before": "f" * 32})).status_code == 400
        assert (await c.get("/tasks", params={"limit": "many"})).status_code == 400


async def test_task_data_is_escaped(app: LiteTask) -> None:
    t = jobs.register(app)
    tid = await t["fail_async"].adelay(XSS)
    async with running_worker(app):
        await app.wait(tid, 10)
    async with client(app.dashboard(token=TOKEN)) as c:
        for url in (f"/tasks/{tid}", "/tasks", "/"):
            r = await c.get(url)
            assert r.status_code == 200
            assert XSS not in r.text, url
            assert "alert(1)" not in r.text or "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text, url
        detail = (await c.get(f"/tasks/{tid}")).text
        assert detail.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # argument, error message, traceback


async def test_actions_need_the_token(app: LiteTask) -> None:
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 1)
    async with client(app.dashboard(token=TOKEN)) as c:
        r = await c.post(f"/tasks/{tid}/cancel")
        assert r.status_code == 403 and "Missing or wrong token" in r.text
        r = await c.post(f"/tasks/{tid}/cancel", data={"token": "wrong"})
        assert r.status_code == 403
        r = await c.post(f"/tasks/{tid}/cancel", data={"token": ""})
        assert r.status_code == 403
        r = await c.post(f"/tasks/{tid}/cancel", headers={"X-LiteTask-Token": TOKEN + "x"})
        assert r.status_code == 403
        r = await c.post(f"/tasks/{tid}/cancel", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403
        r = await c.post(f"/tasks/{tid}/retry", data={"token": "wrong"})
        assert r.status_code == 403
        assert (await app.get_task(tid)).status is TaskStatus.PENDING  # type: ignore[union-attr]
        # the right token, as a form field: cancelled, redirected back to the detail page
        r = await c.post(f"/tasks/{tid}/cancel", data={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == f"/tasks/{tid}?notice=cancelled"
        assert (await app.get_task(tid)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
        r = await c.get(r.headers["location"])
        assert "Cancellation requested" in r.text and 'id="retry-button"' in r.text
        r = await c.post(f"/tasks/{tid}/cancel", headers={"X-LiteTask-Token": TOKEN})
        assert r.status_code == 303 and r.headers["location"].endswith("notice=cancel-noop")
        # retry with the header, asking for JSON
        r = await c.post(f"/tasks/{tid}/retry", headers={"Authorization": f"Bearer {TOKEN}",
                                                          "Accept": "application/json"})
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["status"] == "pending"
        r = await c.post(f"/tasks/{tid}/retry", data={"token": TOKEN})
        assert r.headers["location"].endswith("notice=retry-noop")
        r = await c.post("/tasks/" + "0" * 32 + "/cancel", data={"token": TOKEN})
        assert r.status_code == 404
        r = await c.post("/tasks/" + "0" * 32 + "/cancel")
        assert r.status_code == 403  # the token is checked first: no probing without it
    async with running_worker(app):
        assert (await app.wait(tid, 10)).result == 2


async def test_cancel_running_and_retry_failed_with_token(app: LiteTask, tmp_path: Path) -> None:
    t = jobs.register(app)
    marker = str(tmp_path / "marker")
    flaky = await t["fail_once"].adelay(marker)
    slow = await t["sleep_async"].adelay(30)
    async with client(app.dashboard(token=TOKEN)) as c, running_worker(app):
        assert (await app.wait(flaky, 10)).status is TaskStatus.FAILED
        r = await c.post(f"/tasks/{flaky}/retry", data={"token": TOKEN})
        assert r.status_code == 303
        done = await app.wait(flaky, 10)
        assert done.status is TaskStatus.COMPLETED and done.result == "second time lucky" and done.attempts == 2
        page = (await c.get(f"/tasks/{flaky}")).text
        assert "second time lucky" in page and "first run: created" in page  # result and attempt 1's error
        while (await app.get_task(slow)).status is not TaskStatus.RUNNING:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        r = await c.post(f"/tasks/{slow}/cancel", headers={"X-LiteTask-Token": TOKEN})
        assert r.status_code == 303
        assert (await app.wait(slow, 10)).status is TaskStatus.CANCELLED


async def test_without_a_token_actions_are_disabled(app: LiteTask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LITETASK_DASHBOARD_TOKEN", raising=False)
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 1)
    async with client(app.dashboard()) as c:
        page = (await c.get(f"/tasks/{tid}")).text
        assert "actions disabled" in page and 'id="cancel-button"' not in page
        for data in ({}, {"token": ""}, {"token": "anything"}):
            assert (await c.post(f"/tasks/{tid}/cancel", data=data)).status_code == 403
        r = await c.post(f"/tasks/{tid}/cancel", headers={"X-LiteTask-Token": ""})
        assert r.status_code == 403 and "no token is configured" in r.text
    # the token comes from the environment by default
    monkeypatch.setenv("LITETASK_DASHBOARD_TOKEN", "from-env")
    async with client(app.dashboard()) as c:
        assert (await c.post(f"/tasks/{tid}/cancel", data={"token": TOKEN})).status_code == 403
        assert (await c.post(f"/tasks/{tid}/cancel", data={"token": "from-env"})).status_code == 303
    assert (await app.get_task(tid)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_read_only_hides_and_refuses_actions(app: LiteTask) -> None:
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 1)
    async with client(app.dashboard(token=TOKEN, read_only=True)) as c:
        page = (await c.get(f"/tasks/{tid}")).text
        assert "read-only" in page
        assert 'id="actions"' not in page and "cancel-button" not in page and 'name="token"' not in page
        for action in ("cancel", "retry"):
            r = await c.post(f"/tasks/{tid}/{action}", data={"token": TOKEN})
            assert r.status_code == 403 and "read-only" in r.text
            r = await c.post(f"/tasks/{tid}/{action}", headers={"X-LiteTask-Token": TOKEN})
            assert r.status_code == 403
    assert (await app.get_task(tid)).status is TaskStatus.PENDING  # type: ignore[union-attr]


async def test_non_ascii_token_in_headers_bearer_and_form(app: LiteTask) -> None:
    token = "pässwörd"
    t = jobs.register(app)
    ids = [await t["aadd"].configure(countdown=3600).adelay(i, i) for i in range(5)]
    async with client(app.dashboard(token=token)) as c:
        # Header values are bytes on the wire: the token's UTF-8 encoding (curl, browsers, httpx
        # given bytes), or its latin-1 one (Python's http.client and requests given a str).
        for tid, headers in zip(ids, [
            {"X-LiteTask-Token": token.encode("utf-8")},
            {"X-LiteTask-Token": token.encode("latin-1")},
            {"Authorization": b"Bearer " + token.encode("utf-8")},
            {"Authorization": b"bearer " + token.encode("latin-1") + b" "},
        ], strict=False):
            r = await c.post(f"/tasks/{tid}/cancel", headers=headers)
            assert r.status_code == 303 and r.headers["location"].endswith("notice=cancelled"), headers
        r = await c.post(f"/tasks/{ids[4]}/cancel", data={"token": token})
        assert r.status_code == 303 and r.headers["location"].endswith("notice=cancelled")
        for wrong in ({"X-LiteTask-Token": "passwörd".encode()},  # one letter off
                      {"X-LiteTask-Token": token.encode("utf-16")},
                      {"X-LiteTask-Token": token.encode().decode("latin-1").encode()},  # UTF-8 twice
                      {"Authorization": b"Bearer " + token.upper().encode()}):
            r = await c.post(f"/tasks/{ids[0]}/retry", headers=wrong)
            assert r.status_code == 403 and "Missing or wrong token" in r.text, wrong
    for tid in ids:
        assert (await app.get_task(tid)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_nul_in_ids_and_filters_is_a_clear_answer_not_a_server_error(app: LiteTask) -> None:
    """No task id, name or queue can hold NUL: an id is not found (404); a filter lists nothing
    or is refused (400), as the app chooses; never a 500."""
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 1)
    async with client(app.dashboard(token=TOKEN)) as c:
        for path in ("/tasks/%00", "/tasks/%00/live", "/tasks/a%00b"):
            r = await c.get(path)
            assert r.status_code == 404 and "Not found" in r.text, path
        for action in ("cancel", "retry"):
            r = await c.post(f"/tasks/%00/{action}", data={"token": TOKEN})
            assert r.status_code == 404 and "Not found" in r.text, action
            r = await c.post(f"/tasks/%00/{action}", headers={"X-LiteTask-Token": TOKEN,
                                                               "Accept": "application/json"})
            assert r.status_code == 404 and r.json()["error"] == "Not found", action
        for query in ("name=%00", "queue=%00", "name=a%00b", "before=%00"):
            r = await c.get(f"/tasks?{query}")
            if r.status_code == 200:
                assert "No tasks match" in r.text and linked_task_ids(r.text) == [], query
            else:
                assert r.status_code == 400 and "Bad request" in r.text, (query, r.status_code)
        # and the dashboard is still fine afterwards
        assert (await c.get("/tasks")).status_code == 200
        assert (await c.get(f"/tasks/{tid}")).status_code == 200


async def test_a_payload_too_deep_to_decode_still_renders(app: LiteTask) -> None:
    """A stored payload json cannot decode stays raw text in the record; the pages show it."""
    from litetask_async.records import NewTask

    t = jobs.register(app)
    deep = "[" * 5_000 + "]" * 5_000
    b = await app.broker()
    [tid] = await b.enqueue([NewTask(id=uuid.uuid4().hex, name=t["aadd"].name,
                                     args_json=f"[{deep},1]", kwargs_json=f'{{"b": {deep}}}')])
    async with client(app.dashboard(token=TOKEN)) as c:
        for path in ("/tasks", f"/tasks/{tid}", f"/tasks/{tid}/live", "/"):
            r = await c.get(path)
            assert r.status_code == 200, (path, r.status_code)
        assert tid in linked_task_ids((await c.get("/tasks")).text)


async def test_postgres_refusing_the_role_or_database_is_a_503(postgres_server_url: str) -> None:
    from sqlalchemy.engine import make_url

    server = make_url(postgres_server_url)
    for url, reason in [
        (server.set(username="litetask_no_such_role"), 'role "litetask_no_such_role"'),
        (server.set(database="litetask_no_such_db"), 'database "litetask_no_such_db" does not exist'),
    ]:
        refused = LiteTask(url.render_as_string(hide_password=False))
        try:
            async with client(refused.dashboard(token=TOKEN)) as c:
                for path in ("/", "/tasks", "/tasks/" + "0" * 32, "/workers", "/metrics"):
                    r = await c.get(path)
                    assert r.status_code == 503 and "Database unavailable" in r.text, (path, r.text)
                    assert reason in html.unescape(r.text), path
            async with client(refused.metrics_asgi()) as c:
                r = await c.get("/metrics")
                assert r.status_code == 503 and reason in r.text, r.text
        finally:
            await refused.aclose()
            refused.close()


async def test_metrics(app: LiteTask) -> None:
    t = jobs.register(app)
    ok = [await t["aadd"].adelay(i, 1) for i in range(3)]
    bad = await t["fail_async"].adelay("no")
    flaky = await t["flaky_async"].adelay(f"metrics-{uuid.uuid4().hex}", 1)  # fails once, then completes
    await t["aadd"].configure(queue="later", countdown=3600).adelay(0, 0)
    async with running_worker(app):
        for tid in [*ok, bad, flaky]:
            await app.wait(tid, 10)
    async with client(app.dashboard()) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = metric_samples(r.text)
    aadd, fail, fl = (("task", "tests.jobs.aadd"),), (("task", "tests.jobs.fail_async"),), \
        (("task", "tests.jobs.flaky_async"),)
    assert m[("litetask_tasks_enqueued_total", aadd)] == 4
    assert m[("litetask_tasks_completed_total", aadd)] == 3
    assert m[("litetask_tasks_failed_total", aadd)] == 0
    assert m[("litetask_tasks_failed_total", fail)] == 1
    assert m[("litetask_tasks_completed_total", fl)] == 1
    assert m[("litetask_tasks_retried_total", fl)] == 1
    assert m[("litetask_tasks_retried_total", aadd)] == 0
    assert m[("litetask_task_duration_seconds_count", aadd)] == 3
    assert m[("litetask_task_duration_seconds_count", fail)] == 1
    assert 0 <= m[("litetask_task_duration_seconds_sum", aadd)] < 5
    buckets = [m[("litetask_task_duration_seconds_bucket", (("le", repr(b)), *aadd))] for b in DURATION_BUCKETS]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative; all ran in under 300 s
    assert m[("litetask_task_duration_seconds_bucket", (("le", "+Inf"), *aadd))] == 3
    assert m[("litetask_queue_depth", (("queue", "later"),))] == 1
    assert m[("litetask_queue_depth", (("queue", "default"),))] == 0
    assert m[("litetask_tasks", (("queue", "default"), ("status", "completed")))] == 4
    assert m[("litetask_oldest_pending_age_seconds", ())] == 0  # the pending task is not due yet
    assert m[("litetask_workers_alive", ())] == 0
    for name in ("litetask_tasks_enqueued", "litetask_tasks_completed", "litetask_tasks_failed",
                 "litetask_tasks_retried"):
        assert f"# TYPE {name}_total counter" in r.text or f"# TYPE {name} counter" in r.text
    assert "# TYPE litetask_task_duration_seconds histogram" in r.text
    # OpenMetrics on request
    async with client(app.dashboard()) as c:
        r = await c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text") and r.text.endswith("# EOF\n")


async def test_metrics_gauges_with_a_live_worker(app: LiteTask) -> None:
    t = jobs.register(app)
    await t["aadd"].configure(queue="q").adelay(1, 1)
    await asyncio.sleep(0.3)
    metrics = app.metrics_asgi()
    async with client(metrics) as c:
        m = metric_samples((await c.get("/metrics")).text)
        assert m[("litetask_queue_depth", (("queue", "q"),))] == 1
        assert m[("litetask_oldest_pending_age_seconds", ())] >= 0.2
        async with running_worker(app, queues=["other"]):
            await asyncio.sleep(0.5)
            m = metric_samples((await c.get("/")).text)
            assert m[("litetask_workers_alive", ())] == 1


async def test_metrics_asgi_standalone(app: LiteTask) -> None:
    t = jobs.register(app)
    await t["aadd"].adelay(1, 2)
    metrics = app.metrics_asgi()
    async with client(metrics) as c:
        for path in ("/metrics", "/", "/anything"):
            r = await c.get(path)
            assert r.status_code == 200, path
            assert 'litetask_tasks_enqueued_total{task="tests.jobs.aadd"} 1.0' in r.text
        r = await c.head("/metrics")
        assert r.status_code == 200 and r.content == b""
        r = await c.post("/metrics")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    # ASGI lifespan: startup and shutdown complete (shutdown closes this loop's broker)
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await metrics({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [s["type"] for s in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (await app.list_tasks())[0].name == "tests.jobs.aadd"  # reopened on next use


async def test_mounted_under_a_prefix(app: LiteTask) -> None:
    from fastapi import FastAPI

    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 1)
    api = FastAPI()

    @api.get("/overview")
    def overview() -> dict[str, str]:  # same name as a dashboard route: must not be picked up
        return {"api": "yes"}

    api.mount("/ops/tasks", app.dashboard(token=TOKEN))
    api.mount("/ops/metrics", app.metrics_asgi())
    async with client(api) as c:
        assert (await c.get("/overview")).json() == {"api": "yes"}
        r = await c.get("/ops/tasks/")
        assert r.status_code == 200
        assert 'href="/ops/tasks/tasks"' in r.text and 'href="/ops/tasks/workers"' in r.text
        css = re.search(r'href="(/ops/tasks/static/dashboard\.css\?v=[^"]+)"', r.text)
        assert css is not None and (await c.get(html.unescape(css.group(1)))).status_code == 200
        r = await c.get("/ops/tasks/tasks")
        assert f'href="/ops/tasks/tasks/{tid}"' in r.text and 'action="/ops/tasks/tasks"' in r.text
        r = await c.get(f"/ops/tasks/tasks/{tid}")
        assert f'data-live-url="/ops/tasks/tasks/{tid}/live"' in r.text
        assert f'formaction="/ops/tasks/tasks/{tid}/cancel"' in r.text
        assert (await c.get(f"/ops/tasks/tasks/{tid}/live")).json()["status"] == "pending"
        r = await c.post(f"/ops/tasks/tasks/{tid}/cancel", data={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == f"/ops/tasks/tasks/{tid}?notice=cancelled"
        r = await c.get("/ops/tasks/metrics")
        assert r.status_code == 200 and "litetask_tasks_cancelled_total" in r.text
        r = await c.get("/ops/metrics/")
        assert r.status_code == 200 and "litetask_workers_alive" in r.text
    # behind a proxy that sets root_path
    async with client(app.dashboard(), root_path="/proxied") as c:
        r = await c.get("/tasks")
        assert r.status_code == 200 and f'href="/proxied/tasks/{tid}"' in r.text


def test_throughput_chart_and_formatting() -> None:
    now = 1_700_000_000.0
    minute = int(now // 60) * 60
    chart = throughput_chart([(minute - 120, 4, 1), (minute, 2, 0), (minute - 7200, 9, 9)], now)
    assert len(chart.bars) == 60 and chart.peak == 5 and (chart.completed, chart.failed) == (6, 1)
    bar = chart.bars[-3]
    assert (bar.completed, bar.failed) == (4, 1) and bar.completed_h == 80 and bar.failed_h == 20
    assert chart.bars[-1].completed == 2 and chart.bars[0].completed == 0
    empty = throughput_chart([], now)
    assert empty.peak == 0 and all(b.completed_h == 0 for b in empty.bars)
    assert [fmt_seconds(s) for s in (None, 0.25, 12.34, 125, 7300, 90000)] == \
        ["—", "250 ms", "12.3 s", "2 min 5 s", "2 h 1 min", "1 d 1 h"]


def test_core_imports_without_the_extra_and_says_how_to_get_it() -> None:
    code = """
import sys
for name in ("starlette", "jinja2", "prometheus_client"):
    sys.modules[name] = None  # as if not installed
import litetask_async
from litetask_async import LiteTask
app = LiteTask("memory://")
for make in (app.dashboard, app.metrics_asgi):
    try:
        make()
    except ImportError as exc:
        print(type(exc).__name__, exc)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert line.startswith("DashboardDependencyError") and "pip install litetask_async[dashboard]" in line
    r = subprocess.run([sys.executable, "-c", "import sys, litetask_async; litetask_async.LiteTask('memory://'); "
                        "print(sorted(m for m in ('starlette', 'jinja2', 'prometheus_client') if m in sys.modules))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
