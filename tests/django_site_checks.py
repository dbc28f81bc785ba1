"""examples/django_site seen from inside a Django process, through Django's test client.

Not collected on its own (Django's settings are process-wide): ``tests/test_django.py`` runs this
file with pytest in a subprocess per task database, with the site's settings, a migrated Django
database and a worker process (``python manage.py litetask_worker``) already running.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

if os.environ.get("DJANGO_SETTINGS_MODULE") != "project.settings":
    pytest.skip("run by tests/test_django.py, in a process set up for examples/django_site",
                allow_module_level=True)

TASK = "reports.tasks.build_report"


@pytest.fixture(scope="module", autouse=True)
def _django() -> Iterator[None]:
    import django
    from django.test.utils import setup_test_environment, teardown_test_environment

    django.setup()
    setup_test_environment()
    yield
    teardown_test_environment()


@pytest.fixture
def client() -> Any:
    from django.test import Client

    return Client()


def app() -> Any:
    from litetask_async.contrib.django import get_app

    return get_app()


def task_ids() -> set[str]:
    return {r.id for r in app().list_tasks_sync(name=TASK, limit=10_000)}


def new_report(title: str = "r", rows: int = 10, seconds: float = 0.0) -> Any:
    from reports.models import Report

    return Report.objects.create(title=title, rows=rows, seconds=seconds)


def poll(client: Any, pk: int, until: Callable[[dict[str, Any]], bool], seen: list[dict[str, Any]],
         timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/reports/{pk}/progress")
        assert r.status_code == 200, r.content
        body: dict[str, Any] = r.json()
        seen.append(body)
        if until(body):
            return body
        assert time.monotonic() < deadline, f"gave up waiting; last answer: {body}"
        time.sleep(0.05)


def test_settings_and_discovery() -> None:
    from litetask_async.contrib.django import DjangoLiteTask
    from litetask_async.contrib.django import app as imported

    assert isinstance(app(), DjangoLiteTask) and imported is app()
    assert app().url == os.environ["LITETASK_URL"]
    assert TASK in app().tasks  # reports/tasks.py was imported when Django started


def test_bad_settings_are_improperly_configured() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from litetask_async.contrib.django import _build_app

    for setting, message in [({"url": "sqlite:///x.db", "colour": "red"}, "unknown option"),
                             ({"url": "mysql://db/x"}, "unknown broker URL scheme"),
                             ({"url": "memory://", "result_ttl": -1}, "result_ttl"),
                             (["sqlite:///x.db"], "must be a dict")]:
        with override_settings(LITETASK=setting), pytest.raises(ImproperlyConfigured, match=message):
            _build_app()
    with override_settings(LITETASK={"url": "memory://x", "result_ttl": 60, "auto_migrate": False}):
        built = _build_app()
    assert built.url == "memory://x" and built.result_ttl is not None and built.result_ttl.total_seconds() == 60


def test_view_starts_a_report_and_the_page_shows_its_progress(client: Any) -> None:
    from reports.models import Report

    r = client.get("/reports/")
    assert r.status_code == 200 and b"Start report" in r.content
    before = task_ids()
    r = client.post("/reports/", {"title": "", "rows": 0, "seconds": 1})
    assert r.status_code == 400  # the form refuses it; nothing is started
    assert task_ids() == before

    r = client.post("/reports/", {"title": "Q3 <sales>", "rows": 100, "seconds": 0.6})
    assert r.status_code == 302, r.content
    m = re.fullmatch(r"/reports/(\d+)/", r["Location"])
    assert m, r["Location"]
    report = Report.objects.get(pk=int(m.group(1)))
    assert re.fullmatch(r"[0-9a-f]{32}", report.task_id)
    assert task_ids() - before == {report.task_id}  # enqueued once, with the id the view saved

    page = client.get(r["Location"])
    assert page.status_code == 200
    assert b"Q3 &lt;sales&gt;" in page.content  # escaped
    assert b'http-equiv="refresh"' in page.content  # not final yet: the page reloads itself

    seen: list[dict[str, Any]] = []
    body = poll(client, report.pk, lambda b: b["final"], seen)
    assert body["status"] == "completed", body
    assert body["progress"] == 100 and body["status_message"] == "step 10 of 10"
    assert body["result"] == {"title": "Q3 <sales>", "rows": 100, "total": 5050}
    progresses = [b["progress"] for b in seen]
    assert progresses == sorted(progresses)
    assert any(0 < p < 100 for p in progresses), progresses

    report.refresh_from_db()
    assert report.total == 5050  # the task wrote it through the ORM, in a pool process
    page = client.get(r["Location"])
    assert b"Total of 100 rows: 5050" in page.content and b"100%" in page.content
    assert b'http-equiv="refresh"' not in page.content and b"Run again" in page.content
    assert b"completed" in page.content

    # "Run again": a plain delay() from a sync view.
    first = report.task_id
    r = client.post(f"/reports/{report.pk}/rerun")
    assert r.status_code == 302
    report.refresh_from_db()
    assert report.task_id != first and report.task_id in task_ids()
    assert poll(client, report.pk, lambda b: b["final"], [])["status"] == "completed"

    assert client.get("/reports/999999/progress").status_code == 404


def test_delay_on_commit_enqueues_after_the_commit_only() -> None:
    from django.db import transaction
    from reports.tasks import build_report

    before = task_ids()
    with transaction.atomic():
        report = new_report("committed")
        pending = build_report.delay_on_commit(report.pk)
        assert not pending.enqueued
        assert app().get_task_sync(pending.id) is None  # not stored before the commit
        assert task_ids() == before
    assert pending.enqueued
    assert task_ids() - before == {pending.id}  # once
    rec = app().wait_sync(pending.id, timeout=30)
    assert rec.status.value == "completed" and rec.result["total"] == 55, rec


def test_delay_on_commit_stores_nothing_on_rollback() -> None:
    from django.db import transaction
    from reports.models import Report
    from reports.tasks import build_report

    before, reports = task_ids(), Report.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        report = new_report("rolled back")
        pending = build_report.delay_on_commit(report.pk)
        raise RuntimeError("the view failed")
    assert not pending.enqueued
    assert Report.objects.count() == reports

    # A savepoint that rolls back drops its own task; the outer block's task is stored.
    with transaction.atomic():
        kept = build_report.delay_on_commit(new_report("kept").pk)
        with pytest.raises(RuntimeError), transaction.atomic():
            dropped = build_report.delay_on_commit(new_report("dropped").pk)
            raise RuntimeError("inner block failed")
    assert kept.enqueued and not dropped.enqueued
    assert task_ids() - before == {kept.id}
    time.sleep(0.3)  # nothing shows up later either
    assert app().get_task_sync(pending.id) is None and app().get_task_sync(dropped.id) is None
    assert task_ids() - before == {kept.id}
    assert app().wait_sync(kept.id, timeout=30).status.value == "completed"


def test_outside_a_transaction_it_enqueues_at_once() -> None:
    from reports.tasks import build_report

    pending = build_report.delay_on_commit(new_report().pk)  # autocommit: on_commit runs now
    assert pending.enqueued and app().get_task_sync(pending.id) is not None


def test_bad_arguments_raise_at_the_call() -> None:
    from django.db import transaction
    from reports.tasks import build_report

    from litetask_async import SerializationError

    before = task_ids()
    with transaction.atomic():
        with pytest.raises(TypeError, match="bad arguments"):
            build_report.delay_on_commit(1, 2)  # type: ignore[call-arg]
        with pytest.raises(SerializationError):
            build_report.delay_on_commit(float("nan"))  # type: ignore[arg-type]
    assert task_ids() == before


def test_enqueue_on_commit_options_names_and_database_alias() -> None:
    from django.db import transaction
    from reports.tasks import build_report

    from litetask_async.contrib.django import enqueue_on_commit

    with transaction.atomic(using="default"):
        configured = enqueue_on_commit(build_report.configure(priority=7), (new_report().pk,), using="default")
        by_name = enqueue_on_commit(TASK, kwargs={"report_id": new_report().pk})
        assert not configured.enqueued and not by_name.enqueued
    for pending, priority in ((configured, 7), (by_name, 0)):
        rec = app().wait_sync(pending.id, timeout=30)
        assert rec.status.value == "completed" and rec.priority == priority, rec
    with pytest.raises(TypeError, match="enqueue_on_commit takes"):
        enqueue_on_commit(42, ())  # type: ignore[arg-type]
