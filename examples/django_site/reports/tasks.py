"""The site's tasks. This module is imported when Django starts (litetask_async.contrib.django
looks for ``tasks.py`` in every installed app), in the web process and in the workers alike."""

import time

from litetask_async import TaskProgress
from litetask_async.contrib.django import app

from .models import Report

STEPS = 10


@app.task(timeout=3600)
def build_report(report_id: int, progress: TaskProgress) -> dict[str, object]:
    """Sum the report's rows in ten steps, reporting progress after each, and store the total.

    A plain ``def``: the worker runs it in a pool process, where the ORM works as in a view.
    ``time.sleep`` stands for the real work (queries, rendering a PDF...).
    """
    report = Report.objects.get(pk=report_id)
    total = 0
    for step in range(STEPS):
        time.sleep(report.seconds / STEPS)
        lo, hi = report.rows * step // STEPS, report.rows * (step + 1) // STEPS
        total += sum(range(lo + 1, hi + 1))
        progress.set((step + 1) * 100 // STEPS, f"step {step + 1} of {STEPS}")
    report.total = total
    report.save(update_fields=["total"])
    return {"title": report.title, "rows": report.rows, "total": total}
