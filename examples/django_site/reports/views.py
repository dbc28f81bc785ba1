"""Start a report (POST /reports/), watch it (GET /reports/<pk>/ and its JSON twin .../progress),
run it again (POST /reports/<pk>/rerun). Plain sync views: ``delay`` and ``delay_on_commit`` are
sync calls, and reading a task back is ``app.get_task_sync``."""

from typing import Any

from django import forms
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from litetask_async import TaskRecord
from litetask_async.contrib.django import app

from .models import Report
from .tasks import build_report


class ReportForm(forms.ModelForm):
    class Meta:
        model = Report
        fields = ("title", "rows", "seconds")

    def clean_rows(self) -> int:
        rows: int = self.cleaned_data["rows"]
        if not 1 <= rows <= 10_000_000:
            raise forms.ValidationError("from 1 to 10,000,000 rows")
        return rows

    def clean_seconds(self) -> float:
        seconds: float = self.cleaned_data["seconds"]
        if not 0 <= seconds <= 600:
            raise forms.ValidationError("from 0 to 600 seconds")
        return seconds


@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            report = form.save()
            # Stored when this transaction commits: a worker never sees a report id whose row
            # it cannot read yet, and a rolled-back request leaves no task behind.
            pending = build_report.delay_on_commit(report.pk)
            report.task_id = pending.id  # the id is known before the commit
            report.save(update_fields=["task_id"])
        return redirect(report)
    status = 400 if request.method == "POST" else 200
    reports = Report.objects.all()[:20]
    return render(request, "reports/index.html", {"form": form, "reports": reports}, status=status)


def _task_state(report: Report) -> dict[str, Any]:
    rec: TaskRecord | None = app.get_task_sync(report.task_id) if report.task_id else None
    return {
        "report": report.pk,
        "title": report.title,
        "task_id": report.task_id or None,
        "status": rec.status.value if rec else "unknown",
        "progress": rec.progress if rec else 0,
        "status_message": rec.status_message if rec else None,
        "result": rec.result if rec else None,
        "error": rec.error["message"] if rec and rec.error else None,
        "final": rec.is_final if rec else False,
    }


@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    report = get_object_or_404(Report, pk=pk)
    return render(request, "reports/report.html", {"report": report, "task": _task_state(report)})


@require_GET
def progress(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(_task_state(get_object_or_404(Report, pk=pk)))


@require_POST
def rerun(request: HttpRequest, pk: int) -> HttpResponse:
    report = get_object_or_404(Report, pk=pk)
    # No transaction here: delay() stores the task at once and returns its id.
    report.task_id = build_report.delay(report.pk)
    report.save(update_fields=["task_id"])
    return redirect(report)
