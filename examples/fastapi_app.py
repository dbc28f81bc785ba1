"""A FastAPI app that hands slow report generation to litetask_async workers.

Endpoints:

- ``POST /reports``               enqueue a report; answers 202 with ``{"task_id": ...}`` at once
- ``GET /reports/{task_id}``      status, progress (0-100), result and error; 404 for an unknown id
- ``DELETE /reports/{task_id}``   cancel: 202 when cancelled (a running report stops within about
                                  a second), 409 when it had already finished, 404 when unknown

The API and the workers share one database, named by the environment variable ``LITETASK_URL``
(default ``sqlite:///reports.db``, a file in the current directory). Run both from the repository
root, in two terminals (or start several workers)::

    pip install uvicorn
    uvicorn examples.fastapi_app:app                  # the API, on http://127.0.0.1:8000
    python -m examples.fastapi_app                    # a worker; stop it with Ctrl-C

The worker command does ``asyncio.run(tasks.run_worker())``; so do these equivalents::

    litetask worker examples.fastapi_app:tasks
    python -c "import asyncio, examples.fastapi_app as m; asyncio.run(m.tasks.run_worker())"

Try it::

    curl -s -X POST localhost:8000/reports -H 'content-type: application/json' \\
         -d '{"title": "Q3 sales", "rows": 1000, "seconds": 5}'
    curl -s localhost:8000/reports/<task_id>
    curl -s -X DELETE localhost:8000/reports/<task_id>

The task has an explicit name (``reports.generate``), so API and worker agree on it however the
module was imported (``examples.fastapi_app``, ``__main__``...).
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Response, status
from pydantic import BaseModel, Field

from litetask_async import LiteTask, TaskNotFound, TaskProgress, TaskRecord, TaskStatus

LITETASK_URL = os.environ.get("LITETASK_URL", "sqlite:///reports.db")

tasks = LiteTask(LITETASK_URL)


# --- the task ---------------------------------------------------------------------------------


class ReportRequest(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    rows: int = Field(default=100, ge=1, le=10_000_000)
    seconds: float = Field(default=2.0, ge=0, le=3600, description="how long the work takes")


class Report(BaseModel):
    title: str
    rows: int
    total: int
    mean: float


@tasks.task(name="reports.generate", timeout=3600)
async def generate_report(request: ReportRequest, progress: TaskProgress) -> Report:
    """Build the report in ten steps, reporting progress after each.

    ``request`` arrives rebuilt as a ``ReportRequest``; the returned ``Report`` is stored as a dict.
    ``asyncio.sleep`` stands for the real I/O (queries, API calls). CPU-heavy work would go in a
    plain ``def`` task instead, which the worker runs in its process pool.
    """
    steps = 10
    total = 0
    for step in range(steps):
        await asyncio.sleep(request.seconds / steps)
        lo, hi = request.rows * step // steps, request.rows * (step + 1) // steps
        total += sum(range(lo + 1, hi + 1))
        progress.set(100 * (step + 1) / steps)
    return Report(title=request.title, rows=request.rows, total=total, mean=total / request.rows)


# --- the API ----------------------------------------------------------------------------------


class TaskCreated(BaseModel):
    task_id: str


class TaskError(BaseModel):
    type: str | None = None
    message: str | None = None


class ReportStatus(BaseModel):
    task_id: str
    status: TaskStatus
    progress: int
    result: Report | None = None
    error: TaskError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class CancelAnswer(BaseModel):
    task_id: str
    cancelled: bool
    status: TaskStatus


def _status(rec: TaskRecord) -> ReportStatus:
    error: dict[str, Any] | None = rec.error
    return ReportStatus(
        task_id=rec.id,
        status=rec.status,
        progress=rec.progress,
        result=Report.model_validate(rec.result) if rec.status is TaskStatus.COMPLETED else None,
        # The stored traceback stays on the server; clients get the type and message.
        error=TaskError(type=error.get("type"), message=error.get("message")) if error else None,
        created_at=rec.created_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
    )


# Opens the task database at start-up and closes it at shutdown.
app = FastAPI(title="litetask_async reports", lifespan=tasks.lifespan)

# Handlers get the task app as a dependency (handy to swap it in tests).
Tasks = Annotated[LiteTask, Depends(tasks.dependency)]


@app.post("/reports", status_code=status.HTTP_202_ACCEPTED)
async def create_report(request: ReportRequest) -> TaskCreated:
    task_id = await generate_report.adelay(request)
    return TaskCreated(task_id=task_id)


@app.get("/reports/{task_id}")
async def get_report(task_id: str, tasks: Tasks) -> ReportStatus:
    rec = await tasks.get_task(task_id)
    if rec is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report task {task_id}")
    return _status(rec)


@app.delete("/reports/{task_id}", status_code=status.HTTP_202_ACCEPTED,
            responses={404: {"description": "unknown task"}, 409: {"description": "already finished"}})
async def cancel_report(task_id: str, response: Response, tasks: Tasks) -> CancelAnswer:
    try:
        cancelled = await tasks.cancel(task_id)
    except TaskNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report task {task_id}") from None
    rec = await tasks.get_task(task_id)
    assert rec is not None
    if not cancelled:
        response.status_code = status.HTTP_409_CONFLICT
    return CancelAnswer(task_id=task_id, cancelled=cancelled, status=rec.status)


if __name__ == "__main__":
    # python -m examples.fastapi_app: run a worker for this app until Ctrl-C / SIGTERM.
    asyncio.run(tasks.run_worker())
