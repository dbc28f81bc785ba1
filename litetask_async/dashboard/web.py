"""The dashboard: a Starlette app rendering Jinja2 templates over the app's async API.

Pages (relative to wherever the app is mounted): ``/`` overview, ``/tasks`` list with filters
and keyset pages, ``/tasks/{id}`` detail (live progress from ``/tasks/{id}/live``), ``/workers``,
``/metrics``. Actions (``POST /tasks/{id}/cancel`` and ``/retry``) need the configured token,
as the form field ``token``, the header ``X-LiteTask-Token`` or ``Authorization: Bearer``.
A non-ASCII token is matched in a header as the raw bytes of its UTF-8 or latin-1 encoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..brokers.base import redact_url
from ..db_errors import connection_refusal, rejected_value
from ..exceptions import BrokerUnavailable, ConfigurationError, TaskNotFound
from ..records import FINAL_STATUSES, TaskRecord, TaskStatus
from . import ASGIApp
from .metrics import render_metrics

if TYPE_CHECKING:
    from ..app import LiteTask

HERE = Path(__file__).resolve().parent
MAX_FORM_BYTES = 16 * 1024
DEFAULT_PAGE = 50
MAX_PAGE = 500
THROUGHPUT_MINUTES = 60

# Pages load scripts and styles from the dashboard only; nothing inline, nothing remote.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

NOTICES = {
    "cancelled": ("ok", "Cancellation requested: a pending task never runs, a running one stops within about a second."),
    "cancel-noop": ("warn", "Nothing to cancel: the task had already finished."),
    "retried": ("ok", "The task is pending again and will run on the next free worker."),
    "retry-noop": ("warn", "Not retried: only failed or cancelled tasks can be retried."),
}


# --- formatting helpers (Jinja filters) ---

def fmt_seconds(seconds: float | None) -> str:
    """A short human duration: 850 ms, 12.3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, rest = divmod(int(s), 60)
        return f"{m} min {rest} s"
    if s < 86400:
        h, rest = divmod(int(s), 3600)
        return f"{h} h {rest // 60} min"
    d, rest = divmod(int(s), 86400)
    return f"{d} d {rest // 3600} h"


def fmt_time(dt: datetime | None) -> str:
    return "—" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_iso(dt: datetime | None) -> str:
    return "" if dt is None else dt.astimezone(UTC).isoformat()


def fmt_ago(dt: datetime | None) -> str:
    if dt is None:
        return "—"
    delta = time.time() - dt.timestamp()
    return "in " + fmt_seconds(-delta) if delta < -1 else fmt_seconds(delta) + " ago"


def fmt_json(value: Any, limit: int = 200_000) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def call_preview(rec: TaskRecord, limit: int = 90) -> str:
    """``1, 'x', key=2`` as a one-line preview of a call's arguments."""
    if not isinstance(rec.args, list) or not isinstance(rec.kwargs, dict):
        # a stored payload that could not be decoded is kept as its raw text
        text = f"{rec.args!s}, {rec.kwargs!s}"
    else:
        parts = [json.dumps(a, ensure_ascii=False, default=str) for a in rec.args]
        parts += [f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in rec.kwargs.items()]
        text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_time(rec: TaskRecord) -> float | None:
    """Seconds the last attempt ran (so far, for a running task)."""
    if rec.started_at is None:
        return None
    if rec.finished_at is not None:
        return max(0.0, rec.finished_at.timestamp() - rec.started_at.timestamp())
    if rec.status is TaskStatus.RUNNING:
        return max(0.0, time.time() - rec.started_at.timestamp())
    return None


@dataclass(frozen=True)
class Bar:
    """One minute of the throughput chart, in SVG units (the chart is 100 high)."""

    x: float
    width: float
    completed: int
    failed: int
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    label: str


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    completed: int
    failed: int
    width: int
    height: int


def throughput_chart(rows: list[tuple[float, int, int]], now: float, minutes: int = THROUGHPUT_MINUTES) -> Chart:
    """Per-minute bars of completed (bottom) and failed (top) tasks over the last ``minutes``."""
    current = int(now // 60) * 60
    per_minute: dict[int, tuple[int, int]] = {}
    for start, completed, failed in rows:
        key = round(start / 60) * 60
        c, f = per_minute.get(key, (0, 0))
        per_minute[key] = (c + int(completed or 0), f + int(failed or 0))
    minutes_list = [current - 60 * i for i in range(minutes - 1, -1, -1)]
    peak = max([sum(per_minute.get(m, (0, 0))) for m in minutes_list] + [0])
    scale = 100 / peak if peak else 0.0
    slot, gap = 10.0, 2.0
    bars = []
    for i, m in enumerate(minutes_list):
        c, f = per_minute.get(m, (0, 0))
        ch, fh = c * scale, f * scale
        stamp = datetime.fromtimestamp(m, tz=UTC).strftime("%H:%M")
        bars.append(Bar(x=i * slot + gap / 2, width=slot - gap, completed=c, failed=f,
                        completed_y=100 - ch, completed_h=ch, failed_y=100 - ch - fh, failed_h=fh,
                        label=f"{stamp} UTC: {c} completed, {f} failed"))
    return Chart(bars=bars, peak=peak, completed=sum(b.completed for b in bars),
                 failed=sum(b.failed for b in bars), width=int(minutes * slot), height=100)


class Dashboard:
    """Holds the app, the token and the templates; :meth:`asgi` builds the Starlette app."""

    def __init__(self, app: LiteTask, *, token: str | None = None, read_only: bool = False) -> None:
        self.app = app
        self.token = token or None
        self._token_digests = () if self.token is None else _token_digests(self.token)
        self.read_only = read_only
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(seconds=fmt_seconds, time=fmt_time, iso=fmt_iso, ago=fmt_ago,
                                pretty=fmt_json, preview=call_preview, run_time=run_time)
        self.version = __version__
        self.kind = app.url.split("://", 1)[0].split("+", 1)[0]
        self.router: Starlette | None = None

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None and not self.read_only

    def asgi(self) -> ASGIApp:
        app = self.app

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            yield
            await app.aclose()  # the broker of the server's loop (it would also close with the loop)

        routes = [
            Route("/", self.overview, name="overview"),
            Route("/tasks", self.task_list, name="tasks"),
            Route("/tasks/{task_id}", self.task_detail, name="task"),
            Route("/tasks/{task_id}/live", self.task_live, name="task_live"),
            Route("/tasks/{task_id}/cancel", self.cancel, methods=["POST"], name="cancel"),
            Route("/tasks/{task_id}/retry", self.retry, methods=["POST"], name="retry"),
            Route("/workers", self.worker_list, name="workers"),
            Route("/metrics", self.metrics, name="metrics"),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        handlers: dict[Any, Any] = {
            HTTPException: self._http_error,
            BrokerUnavailable: self._unavailable,
            ConfigurationError: self._misconfigured,
        }
        if self.kind in ("postgresql", "postgres"):
            import asyncpg

            handlers[asyncpg.PostgresError] = self._postgres_error
        starlette = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
        self.router = starlette
        return starlette

    # --- rendering ---

    def url(self, request: Request, name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
        """The path of a route of this dashboard, under the prefix it is mounted at (root_path)."""
        assert self.router is not None
        path = str(self.router.url_path_for(name, **params))
        root_path: str = request.scope.get("root_path", "")
        url = root_path.rstrip("/") + path
        if query:
            clean = {k: v for k, v in query.items() if v not in (None, "")}
            if clean:
                url += "?" + urlencode(clean)
        return url

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        def url(name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
            return self.url(request, name, query, **params)

        def static(path: str) -> str:
            return self.url(request, "static", path=path) + "?v=" + self.version

        html = self.env.get_template(template).render(
            url=url, static=static, read_only=self.read_only, actions_enabled=self.actions_enabled,
            token_configured=self.token is not None, version=self.version, kind=self.kind,
            now=datetime.now(UTC), statuses=[s.value for s in TaskStatus], **context)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def message(self, request: Request, status_code: int, title: str, text: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": title, "detail": text}, status_code=status_code, headers=SECURITY_HEADERS)
        return self.render(request, "message.html", status_code, nav="", title=title, text=text)

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request", 413: "Too large"}
        resp = self.message(request, exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    async def _unavailable(self, request: Request, exc: Exception) -> Response:
        return self.message(request, 503, "Database unavailable", str(exc))

    async def _misconfigured(self, request: Request, exc: Exception) -> Response:
        return self.message(request, 503, "Database not ready", str(exc))

    async def _postgres_error(self, request: Request, exc: Exception) -> Response:
        """PostgreSQL refusing the URL's role or database (503) or a value (400); anything else
        is a bug and stays a 500."""
        if (refusal := connection_refusal(exc)) is not None:
            return self.message(request, 503, "Database unavailable",
                                f"PostgreSQL at {redact_url(self.app.url)} refused: {refusal}")
        if (rejected := rejected_value(exc)) is not None:
            return self.message(request, 400, "Bad request", f"PostgreSQL refused a value: {rejected}")
        raise exc

    # --- pages ---

    async def overview(self, request: Request) -> Response:
        stats = await self.app.stats()
        broker = await self.app.broker()
        names: dict[str, dict[str, int]] = {}
        retried: dict[str, int] = {}
        for name, status, n, more in await broker.name_counts():
            names.setdefault(name, {s.value: 0 for s in TaskStatus})[status] = int(n)
            retried[name] = retried.get(name, 0) + int(more or 0)
        chart = throughput_chart(await broker.throughput(THROUGHPUT_MINUTES * 60, 60), time.time())
        return self.render(request, "overview.html", nav="overview", stats=stats,
                           total=sum(stats["totals"].values()), names=dict(sorted(names.items())),
                           retried=retried, chart=chart, queues=dict(sorted(stats["by_queue"].items())))

    async def task_list(self, request: Request) -> Response:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in {s.value for s in TaskStatus}:
            raise HTTPException(400, f"unknown status {status!r}")
        name, queue, before = q.get("name") or None, q.get("queue") or None, q.get("before") or None
        try:
            limit = min(MAX_PAGE, max(1, int(q.get("limit") or DEFAULT_PAGE)))
        except ValueError:
            raise HTTPException(400, "limit must be a number") from None
        try:
            rows = await self.app.list_tasks(status=status, name=name, queue=queue, limit=limit + 1, before=before)
        except TaskNotFound:
            raise HTTPException(400, "the page cursor (before=) names no stored task; start again from the "
                                     "newest tasks") from None
        except Exception as exc:
            if (reason := _refused_input(exc)) is None:
                raise
            raise HTTPException(400, f"these filters cannot be looked up: {reason}") from None
        has_next = len(rows) > limit
        rows = rows[:limit]
        filters = {"status": status, "name": name, "queue": queue,
                   "limit": limit if limit != DEFAULT_PAGE else None}
        next_url = self.url(request, "tasks", {**filters, "before": rows[-1].id}) if has_next and rows else None
        first_url = self.url(request, "tasks", filters) if before else None
        broker = await self.app.broker()
        known_names = sorted({n for n, *_ in await broker.name_counts()} | ({name} if name else set()))
        known_queues = sorted(set((await self.app.stats())["by_queue"]) | ({queue} if queue else set()))
        return self.render(request, "tasks.html", nav="tasks", rows=rows, filters=filters, status=status,
                           name=name, queue=queue, limit=limit, next_url=next_url, first_url=first_url,
                           known_names=known_names, known_queues=known_queues, page_sizes=[20, 50, 100, 200, 500])

    async def _get(self, task_id: str) -> TaskRecord:
        try:
            rec = await self.app.get_task(task_id)
        except Exception as exc:
            if _refused_input(exc) is None:
                raise
            rec = None  # an id the app or the database refuses (a NUL in it) names no task
        if rec is None:
            raise HTTPException(404, f"no task with id {task_id!r}")
        return rec

    async def task_detail(self, request: Request) -> Response:
        rec = await self._get(request.path_params["task_id"])
        logs = await self.app.task_logs(rec.id)
        notice = NOTICES.get(request.query_params.get("notice", ""))
        errors = list(reversed(rec.errors))
        return self.render(request, "task.html", nav="tasks", rec=rec, logs=logs, notice=notice, errors=errors,
                           final=rec.status in FINAL_STATUSES,
                           can_cancel=rec.status in (TaskStatus.PENDING, TaskStatus.RUNNING),
                           can_retry=rec.status in (TaskStatus.FAILED, TaskStatus.CANCELLED))

    async def task_live(self, request: Request) -> Response:
        rec = await self._get(request.path_params["task_id"])
        return JSONResponse(live_state(rec), headers=SECURITY_HEADERS)

    async def worker_list(self, request: Request) -> Response:
        workers = sorted(await self.app.workers(), key=lambda w: (w.hostname, w.started_at))
        return self.render(request, "workers.html", nav="workers", workers=workers)

    async def metrics(self, request: Request) -> Response:
        body, content_type = await render_metrics(self.app, request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    # --- actions ---

    async def _authorize(self, request: Request) -> Response | None:
        """None when the request may act; otherwise the 403 response."""
        if self.read_only:
            return self.message(request, 403, "Forbidden", "This dashboard is read-only.")
        if self.token is None:
            return self.message(request, 403, "Forbidden",
                                "Actions are disabled: no token is configured (LITETASK_DASHBOARD_TOKEN).")
        # Headers as the raw bytes that came over the wire (Starlette decodes them as latin-1).
        supplied = _raw_header(request, b"x-litetask-token")
        auth = _raw_header(request, b"authorization") or b""
        if supplied is None and auth[:7].lower() == b"bearer ":
            supplied = auth[7:].strip()
        if supplied is None:
            field = (await _read_form(request)).get("token")
            supplied = None if field is None else field.encode("utf-8", "surrogateescape")
        if not supplied:
            return self.message(request, 403, "Forbidden", "Missing or wrong token.")
        given = hashlib.sha256(supplied).digest()
        # Compare with every accepted spelling, without stopping at the first match.
        matches = [hmac.compare_digest(given, d) for d in self._token_digests]
        if not any(matches):
            return self.message(request, 403, "Forbidden", "Missing or wrong token.")
        return None

    async def _act(self, request: Request, action: Callable[[str], Any], yes: str, no: str) -> Response:
        refused = await self._authorize(request)
        if refused is not None:
            return refused
        task_id = request.path_params["task_id"]
        try:
            done = bool(await action(task_id))
        except TaskNotFound:
            raise HTTPException(404, f"no task with id {task_id!r}") from None
        except Exception as exc:
            if _refused_input(exc) is None:
                raise
            raise HTTPException(404, f"no task with id {task_id!r}") from None
        if _wants_json(request):
            rec = await self._get(task_id)
            return JSONResponse({"ok": done, **live_state(rec)}, headers=SECURITY_HEADERS)
        return RedirectResponse(self.url(request, "task", {"notice": yes if done else no}, task_id=task_id),
                                status_code=303, headers=SECURITY_HEADERS)

    async def cancel(self, request: Request) -> Response:
        return await self._act(request, self.app.cancel, "cancelled", "cancel-noop")

    async def retry(self, request: Request) -> Response:
        return await self._act(request, self.app.retry, "retried", "retry-noop")


def live_state(rec: TaskRecord) -> dict[str, Any]:
    """The small JSON the detail page polls while a task runs."""
    return {"id": rec.id, "status": rec.status.value, "progress": rec.progress,
            "status_message": rec.status_message, "attempts": rec.attempts,
            "max_attempts": rec.max_attempts, "final": rec.is_final,
            "started_at": fmt_iso(rec.started_at) or None, "finished_at": fmt_iso(rec.finished_at) or None,
            # ready-made text for the page
            "started_text": fmt_time(rec.started_at) + (" UTC" if rec.started_at else ""),
            "run_time_text": fmt_seconds(run_time(rec))}


def _token_digests(token: str) -> tuple[bytes, ...]:
    """Digests of the byte strings that spell ``token`` in a request: its UTF-8 encoding, and its
    latin-1 one, which Python's http.client (and so requests) sends for a non-ASCII header value.

    HTTP headers carry bytes; clients disagree on how to encode text in them. Tokens are compared
    in constant time as fixed-size digests, so not even the length leaks.
    """
    spellings = {token.encode("utf-8", "surrogateescape")}
    with contextlib.suppress(UnicodeEncodeError):
        spellings.add(token.encode("latin-1"))
    return tuple(hashlib.sha256(s).digest() for s in sorted(spellings))


def _raw_header(request: Request, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) as received."""
    for key, value in request.headers.raw:
        if key.lower() == name:
            return value
    return None


def _refused_input(exc: Exception) -> str | None:
    """Why a lookup refused its input, or None for any other error: a ValueError from the app
    (a NUL character, text that is not UTF-8), or PostgreSQL refusing the value."""
    if isinstance(exc, ValueError) and not isinstance(exc, ConfigurationError):
        return str(exc)
    rejected = rejected_value(exc)
    return None if rejected is None else str(rejected)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


async def _read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (small forms only; no multipart)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form") from None
    return {k: v[0] for k, v in fields.items()}
