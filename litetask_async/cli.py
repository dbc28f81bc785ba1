"""The ``litetask`` command: run workers, migrate, and look at (and act on) the task table.

``litetask worker module:app [--concurrency 8]`` runs a worker; ``litetask migrate`` applies the
schema; ``list``, ``show``, ``logs``, ``cancel``, ``retry``, ``purge``, ``stats`` and ``workers``
inspect and operate the queue; ``dashboard`` serves the web dashboard. Every command finds its app
through ``--app MODULE:APP``, ``--url URL`` or the ``LITETASK_APP`` environment variable.

Tables are for people; ``--json`` prints the same data for scripts (datetimes as ISO strings).
Expected failures print one line on stderr and exit non-zero, without a traceback: 2 for usage,
app, URL and database problems, 1 for an unknown task id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import importlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .app import LiteTask
from .brokers.base import redact_url
from .db_errors import connection_refusal, rejected_value
from .exceptions import LiteTaskError, TaskNotFound
from .records import LogRecord, TaskRecord, TaskStatus, WorkerInfo

APP_ENV = "LITETASK_APP"
TOKEN_ENV = "LITETASK_DASHBOARD_TOKEN"
DASHBOARD_MISSING = "the dashboard needs: pip install litetask_async[dashboard]"

EXIT_FAILURE = 1  # unknown task id, dashboard not installed
EXIT_USAGE = 2  # bad command line, app, URL or database

F = TypeVar("F", bound=Callable[..., Any])


class AppImportError(LiteTaskError):
    """The ``module:app`` given on the command line cannot be loaded."""


class CommandError(click.ClickException):
    """An expected failure: one line on stderr, then exit 2 (usage, app, URL or database)."""

    # A class attribute: click >= 8.5 declares ``exit_code`` a ClassVar, so no instance may set it.
    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"litetask: error: {self.format_message()}", err=True)


class CommandFailure(CommandError):
    """An expected failure that exits 1 (the dashboard is not installed)."""

    exit_code = EXIT_FAILURE


def load_app(spec: str) -> LiteTask:
    """Import ``module:attribute`` (the current directory is importable) and return the app."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppImportError(f"expected MODULE:APP (for example 'myproject.tasks:app'), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppImportError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, LiteTask):
        raise AppImportError(f"{spec} is a {type(obj).__name__}, not a LiteTask app")
    return obj


# --- choosing the app ---

def app_options(f: F) -> F:
    """``--app`` and ``--url``, shared by every command."""
    f = click.option("--url", metavar="URL",
                     help="Broker URL (sqlite:///tasks.db, postgresql://user@host/db), instead of an app.")(f)
    f = click.option("--app", "app_spec", metavar="MODULE:APP",
                     help=f"The app, e.g. myproject.tasks:app (default: ${APP_ENV}).")(f)
    return f


def resolve_app(app_spec: str | None, url: str | None, *, needs_tasks: bool = False,
                must_exist: bool = False) -> LiteTask:
    """The app named by ``--app``/``--url``, else by ``$LITETASK_APP``.

    ``needs_tasks``: refuse a bare URL (a worker must know the app's tasks). ``must_exist``: refuse
    an SQLite file that is not there (inspecting a typo'd path would create an empty database).
    """
    if app_spec and url:
        raise click.UsageError("give either --app or --url, not both")
    if not app_spec and not url:
        app_spec = os.environ.get(APP_ENV) or None
        if app_spec is None:
            raise click.UsageError(f"which app? give --app MODULE:APP or --url URL, or set ${APP_ENV}")
    if url is not None:
        if needs_tasks:
            raise click.UsageError(
                "the worker runs the app's tasks: give the app as MODULE:APP, not a bare --url")
        app = LiteTask(url)
    else:
        assert app_spec is not None
        app = load_app(app_spec)
    if must_exist:
        _check_sqlite_file(app.url)
    return app


def _check_sqlite_file(url: str) -> None:
    if not url.lower().startswith("sqlite"):
        return
    from .brokers.sqlite import path_from_url

    path = path_from_url(url)
    if not Path(path).is_file():
        raise CommandError(f"no SQLite database at {path!r} (check the URL; workers and producers create it)")


@contextmanager
def database_errors(app: LiteTask) -> Iterator[None]:
    """PostgreSQL refusing the URL's role, password or database, or a value it was given: one line.

    The broker lets these asyncpg errors through (a refused connection is already a
    BrokerUnavailable); they are mistakes in the URL or the input, not bugs worth a traceback.
    """
    try:
        yield
    except Exception as exc:
        if (refusal := connection_refusal(exc)) is not None:
            raise CommandError(f"cannot use PostgreSQL at {redact_url(app.url)}: {refusal}") from None
        if (rejected := rejected_value(exc)) is not None:
            raise CommandError(f"PostgreSQL refused a value: {rejected}") from None
        raise


@contextmanager
def opened(app_spec: str | None, url: str | None) -> Iterator[LiteTask]:
    """The app for an inspecting command, closed at the end."""
    app = resolve_app(app_spec, url, must_exist=True)
    try:
        with database_errors(app):
            yield app
    finally:
        app.close()


# --- output ---

def fmt_time(dt: datetime | None, *, millis: bool = False) -> str:
    """UTC, to the second (or millisecond); ``-`` for None."""
    if dt is None:
        return "-"
    text = dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f" if millis else "%Y-%m-%d %H:%M:%S")
    return text[:-3] if millis else text


def fmt_age(seconds: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def cell(value: object) -> str:
    """A table cell: one line, control characters escaped."""
    text = "-" if value is None else str(value)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Aligned plain-text columns; ``right`` holds the indexes of right-aligned columns."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def to_jsonable(obj: Any) -> Any:
    """Records to dicts, datetimes to ISO strings, enums to their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False))


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def pretty_value(value: Any) -> str:
    """A JSON payload (args, kwargs, result): compact when short, indented when long."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 80:
        text = json.dumps(value, ensure_ascii=False, indent=2)
    return text


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def not_found(task_id: str) -> NoReturn:
    raise TaskNotFound(f"no task with id {task_id!r}")


# --- durations ---

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Far beyond any retention period, and far from what timedelta and PostgreSQL's timestamps can
# hold (now minus a few thousand years is already out of their range).
MAX_DURATION = timedelta(days=36_500)


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` (also ``1.5h``) to a timedelta, at most
    :data:`MAX_DURATION` (100 years)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"expected a duration such as 30s, 15m, 12h, 7d or plain seconds, got {text!r}")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text.strip()!r} is too large: at most {MAX_DURATION.days}d (100 years)")
    return timedelta(seconds=seconds)


def _duration_option(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


# --- the commands ---

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """litetask_async: run workers and look after the task queue.

    Every command takes the app as --app MODULE:APP, or the broker as --url URL, or reads
    MODULE:APP from $LITETASK_APP. Times are shown in UTC.
    """


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (``--log-level``), unless logging is configured already."""
    try:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--log-level'") from None


@cli.command()
@click.argument("positional_app", required=False, metavar="[MODULE:APP]")
@app_options
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tasks run at once.")
@click.option("--queues", default=None, help="Comma-separated queues to take tasks from (default: every queue).")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Process-pool size for plain def tasks (default: min(concurrency, CPUs)).")
@click.option("--heartbeat-interval", type=float, default=5.0, show_default=True)
@click.option("--heartbeat-timeout", type=float, default=30.0, show_default=True)
@click.option("--grace-period", type=float, default=30.0, show_default=True,
              help="Seconds running tasks get to finish on SIGTERM before they are put back.")
@click.option("--max-rescues", type=int, default=3, show_default=True,
              help="Times a task may be taken up again after its worker vanished before it fails.")
@click.option("--poll-interval", type=click.FloatRange(min=0.01, max=3600), default=1.0, show_default=True,
              help="Longest wait of an idle worker between two looks for due tasks, when no wake-up "
                   "comes (PostgreSQL behind a transaction pooler without listen_host).")
@click.option("--log-level", default="INFO", show_default=True)
def worker(positional_app: str | None, app_spec: str | None, url: str | None, concurrency: int,
           queues: str | None, processes: int | None, heartbeat_interval: float, heartbeat_timeout: float,
           grace_period: float, max_rescues: int, poll_interval: float, log_level: str) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal skips the grace period)."""
    from .worker import block_stop_signals

    block_stop_signals()  # from here on, a SIGTERM stops the worker cleanly, even during start-up
    if positional_app and app_spec:
        raise click.UsageError("give the app once: as MODULE:APP or as --app, not both")
    setup_logging(log_level)
    app = resolve_app(positional_app or app_spec, url, needs_tasks=True)
    serve_worker(app, concurrency=concurrency, queues=queues, processes=processes,
                 heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
                 grace_period=grace_period, max_rescues=max_rescues, poll_interval=poll_interval)


#: Parameters of ``worker`` that choose the app; the others are the worker's own options, which
#: ``python manage.py litetask_worker`` (litetask_async.contrib.django) offers as well.
WORKER_APP_PARAMS = frozenset({"positional_app", "app_spec", "url"})


def serve_worker(app: LiteTask, *, concurrency: int, queues: str | None, processes: int | None,
                 heartbeat_interval: float, heartbeat_timeout: float, grace_period: float,
                 max_rescues: int, poll_interval: float = 1.0) -> None:
    """Run a worker for ``app`` until SIGTERM/SIGINT, then close the app; ``queues`` is the
    comma-separated ``--queues`` text. The body of ``litetask worker`` and of the Django command,
    which both call :func:`~litetask_async.worker.block_stop_signals` first, before the app is
    imported."""
    try:
        with database_errors(app):
            asyncio.run(app.run_worker(
                concurrency=concurrency, processes=processes,
                queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
                heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout,
                grace_period=grace_period, max_rescues=max_rescues, poll_interval=poll_interval,
            ))
    finally:
        app.close()


@cli.command()
@app_options
@click.option("--log-level", default="INFO", show_default=True)
def migrate(app_spec: str | None, url: str | None, log_level: str) -> None:
    """Create or upgrade the database schema, then exit."""
    setup_logging(log_level)
    app = resolve_app(app_spec, url)
    try:
        with database_errors(app):
            version = asyncio.run(app.migrate())
    finally:
        app.close()
    click.echo(f"litetask schema is at version {version}")


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="litetask: %(levelname)s %(name)s: %(message)s")


@cli.command("list")
@app_options
@click.option("--status", type=click.Choice([s.value for s in TaskStatus]), default=None,
              help="Only tasks in this state.")
@click.option("--name", default=None, help="Only tasks with this name.")
@click.option("--queue", default=None, help="Only tasks of this queue.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Tasks per page.")
@click.option("--before", metavar="ID", default=None,
              help="Start after this task (the last id of the previous page).")
@json_option
def list_command(app_spec: str | None, url: str | None, status: str | None, name: str | None,
                 queue: str | None, limit: int, before: str | None, as_json: bool) -> None:
    """List tasks, newest first, a page at a time."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        # One more than asked tells whether another page exists.
        records = app.list_tasks_sync(status, name, queue, min(limit + 1, 10_000), before)
    more = len(records) > limit or (limit == 10_000 and len(records) == limit)
    records = records[:limit]
    next_before = records[-1].id if more and records else None
    if as_json:
        echo_json({"tasks": records, "next_before": next_before})
        return
    if not records:
        click.echo("no tasks")
        return
    rows = [[r.id, cell(r.name), r.status.value, f"{r.progress}%", cell(r.queue),
             f"{r.attempts}/{r.max_attempts}", fmt_time(r.created_at), fmt_time(r.finished_at)]
            for r in records]
    click.echo(table(["ID", "NAME", "STATUS", "PROGRESS", "QUEUE", "ATTEMPTS", "CREATED", "FINISHED"],
                     rows, right=frozenset({3, 5})))
    if next_before is not None:
        click.echo(f"more tasks: next page with --before {next_before}")


def _error_lines(err: dict[str, Any]) -> str:
    attempt = f" (attempt {err['attempt']})" if err.get("attempt") is not None else ""
    return f"{err.get('type', '?')}: {err.get('message', '')}{attempt}"


def render_record(r: TaskRecord) -> str:
    worker = "-" if r.worker_id is None else r.worker_id
    fields: list[tuple[str, str]] = [
        ("id", r.id),
        ("name", cell(r.name)),
        ("status", r.status.value),
        ("status message", cell(r.status_message)),
        ("progress", f"{r.progress}%"),
        ("queue", cell(r.queue)),
        ("priority", str(r.priority)),
        ("attempts", f"{r.attempts} of {r.max_attempts}"),
        ("unique key", cell(r.unique_key)),
        ("created", fmt_time(r.created_at)),
        ("run at", fmt_time(r.run_at)),
        ("started", fmt_time(r.started_at)),
        ("finished", fmt_time(r.finished_at)),
        ("worker", cell(worker)),
        ("pid", cell(r.pid)),
        ("heartbeat", fmt_time(r.heartbeat_at)),
    ]
    width = max(len(k) for k, _ in fields) + 2
    out = [f"{k + ':':<{width}}{v}" for k, v in fields]
    for label, value in (("args", r.args), ("kwargs", r.kwargs), ("result", r.result)):
        if label == "result" and value is None and r.status is not TaskStatus.COMPLETED:
            out.append(f"{'result:':<{width}}-")
            continue
        text = pretty_value(value)
        if "\n" in text:
            out.append(f"{label}:")
            out.append(indent(text))
        else:
            out.append(f"{label + ':':<{width}}{text}")
    if r.error is None:
        out.append(f"{'error:':<{width}}-")
    else:
        out.append(f"{'error:':<{width}}{_error_lines(r.error)}")
        if r.error.get("traceback"):
            out.append(indent(str(r.error["traceback"])))
    if r.errors:
        out.append(f"errors ({len(r.errors)}, oldest first):")
        for e in r.errors:
            at = f" at {e['at']}" if e.get("at") else ""
            out.append(f"  {_error_lines(e)}{at}")
    return "\n".join(out)


@cli.command()
@click.argument("task_id", metavar="ID")
@app_options
@json_option
def show(task_id: str, app_spec: str | None, url: str | None, as_json: bool) -> None:
    """Everything stored about one task."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        rec = app.get_task_sync(task_id)
    if rec is None:
        not_found(task_id)
    if as_json:
        echo_json(rec)
    else:
        click.echo(render_record(rec))


def progress_line(rec: TaskRecord, width: int = 30) -> str:
    """``[#########.....]  30%  running  step 3 of 10`` for the live view of ``wait``."""
    filled = round(width * rec.progress / 100)
    message = f"  {rec.status_message}" if rec.status_message else ""
    return f"[{'#' * filled}{'.' * (width - filled)}] {rec.progress:3d}%  {rec.status.value}{message}"


@cli.command()
@click.argument("task_id", metavar="ID")
@app_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Give up after this many seconds (exit 2); default: wait as long as it takes.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.2, show_default=True,
              help="Seconds between looks at the task.")
@json_option
def wait(task_id: str, app_spec: str | None, url: str | None, timeout: float | None, interval: float,
         as_json: bool) -> None:
    """Wait for a task to end, showing its progress bar and status line on stderr meanwhile.

    Then prints the result (or, with --json, the whole record) and exits 0 if the task
    completed, 1 if it failed or was cancelled (its error goes to stderr), 2 on --timeout.
    """
    _quiet_logging()
    live = sys.stderr.isatty()
    shown = ""
    deadline = None if timeout is None else time.monotonic() + timeout
    with opened(app_spec, url) as app:
        while True:
            rec = app.get_task_sync(task_id)
            if rec is None:
                not_found(task_id)
            if rec.is_final:
                break
            line = progress_line(rec)
            if line != shown:  # on a terminal, redrawn in place; in a log, a line per change
                click.echo(f"\r\x1b[2K{line}" if live else line, nl=not live, err=True)
                shown = line
            if deadline is not None and time.monotonic() >= deadline:
                if live:
                    click.echo(err=True)
                raise CommandError(f"timed out after {timeout:g}s; task {task_id} is still {rec.status.value}")
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
    if live and shown:
        click.echo(f"\r\x1b[2K{progress_line(rec)}", err=True)
    elif not live:
        click.echo(progress_line(rec), err=True)
    if as_json:
        echo_json(rec)
    elif rec.status is TaskStatus.COMPLETED:
        click.echo(pretty_value(rec.result))
    if rec.status is not TaskStatus.COMPLETED:
        if rec.error is not None and not as_json:
            click.echo(_error_lines(rec.error), err=True)
            if rec.error.get("traceback"):
                click.echo(indent(str(rec.error["traceback"])), err=True)
        sys.exit(EXIT_FAILURE)


def render_logs(logs: Sequence[LogRecord]) -> str:
    rows: list[list[str]] = []
    for lr in logs:
        lines = lr.message.splitlines() or [""]
        rows.append([fmt_time(lr.at, millis=True), lr.level, str(lr.attempt), cell(lines[0])])
        rows.extend(["", "", "", "  " + cell(more)] for more in lines[1:])
    return table(["TIME", "LEVEL", "ATTEMPT", "MESSAGE"], rows, right=frozenset({2}))


@cli.command()
@click.argument("task_id", metavar="ID")
@app_options
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@json_option
def logs(task_id: str, app_spec: str | None, url: str | None, limit: int, as_json: bool) -> None:
    """The log records a task emitted, oldest first."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        if app.get_task_sync(task_id) is None:
            not_found(task_id)
        records = app.task_logs_sync(task_id, limit)
    if as_json:
        echo_json(records)
    elif not records:
        click.echo("no log records")
    else:
        click.echo(render_logs(records))


@cli.command()
@click.argument("task_id", metavar="ID")
@app_options
@json_option
def cancel(task_id: str, app_spec: str | None, url: str | None, as_json: bool) -> None:
    """Cancel a task: a pending one never runs, a running one is stopped by its worker."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        done = app.cancel_sync(task_id)
        rec = app.get_task_sync(task_id)
    status = rec.status.value if rec is not None else None
    if as_json:
        echo_json({"id": task_id, "cancelled": done, "status": status})
    elif done and status == TaskStatus.RUNNING:
        click.echo(f"{task_id}: cancel requested: its worker stops it within about a second")
    elif done:
        click.echo(f"{task_id}: cancelled")
    else:
        click.echo(f"{task_id}: already finished ({status}): nothing to cancel")


@cli.command()
@click.argument("task_id", metavar="ID")
@app_options
@json_option
def retry(task_id: str, app_spec: str | None, url: str | None, as_json: bool) -> None:
    """Run a failed or cancelled task again (its error history is kept)."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        done = app.retry_sync(task_id)
        rec = app.get_task_sync(task_id)
    status = rec.status.value if rec is not None else None
    if as_json:
        echo_json({"id": task_id, "retried": done, "status": status})
    elif done:
        click.echo(f"{task_id}: queued again")
    else:
        click.echo(f"{task_id}: {status}: only failed or cancelled tasks can be retried; nothing done")


@cli.command()
@app_options
@click.option("--older-than", metavar="DURATION", required=True, callback=_duration_option,
              help="Age since the task finished: 30s, 15m, 12h, 7d or plain seconds.")
@json_option
def purge(app_spec: str | None, url: str | None, older_than: timedelta, as_json: bool) -> None:
    """Delete finished tasks (completed, failed, cancelled); pending and running ones stay."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        n = app.purge_sync(older_than)
    if as_json:
        echo_json({"purged": n, "older_than_seconds": older_than.total_seconds()})
    else:
        click.echo(f"purged {n} finished task{'' if n == 1 else 's'} older than "
                   f"{fmt_age(older_than.total_seconds())}")


def render_stats(stats: dict[str, Any]) -> str:
    statuses = [s.value for s in TaskStatus]
    rows = [[cell(q), *(str(counts.get(s, 0)) for s in statuses), str(sum(counts.values()))]
            for q, counts in sorted(stats["by_queue"].items())]
    totals = stats["totals"]
    rows.append(["(all)", *(str(totals.get(s, 0)) for s in statuses), str(sum(totals.values()))])
    out = [table(["QUEUE", *(s.upper() for s in statuses), "TOTAL"], rows,
                 right=frozenset(range(1, len(statuses) + 2)))]
    out.append("")
    out.append(f"oldest pending:        {fmt_age(stats.get('oldest_pending_age'))}")
    out.append(f"completed last minute: {stats.get('completed_last_minute', 0)}")
    out.append(f"failed last minute:    {stats.get('failed_last_minute', 0)}")
    out.append(f"workers alive:         {stats.get('workers_alive', 0)}")
    return "\n".join(out)


@cli.command()
@app_options
@json_option
def stats(app_spec: str | None, url: str | None, as_json: bool) -> None:
    """Counts by queue and status, oldest pending age, throughput, live workers."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        data = app.stats_sync()
    if as_json:
        echo_json(data)
    else:
        click.echo(render_stats(data))


def render_workers(infos: Sequence[WorkerInfo]) -> str:
    now = datetime.now(UTC)
    rows = [[cell(w.id), cell(w.hostname), str(w.pid),
             "(all)" if w.queues is None else cell(",".join(w.queues)),
             str(w.running), str(w.concurrency), fmt_time(w.started_at),
             f"{fmt_age((now - w.last_heartbeat).total_seconds())} ago"]
            for w in infos]
    return table(["ID", "HOST", "PID", "QUEUES", "RUNNING", "CONCURRENCY", "STARTED", "HEARTBEAT"],
                 rows, right=frozenset({2, 4, 5}))


@cli.command("workers")
@app_options
@json_option
def workers_command(app_spec: str | None, url: str | None, as_json: bool) -> None:
    """Live workers (heartbeat within the last minute)."""
    _quiet_logging()
    with opened(app_spec, url) as app:
        infos = app.workers_sync()
    if as_json:
        echo_json(infos)
    elif not infos:
        click.echo("no live workers")
    else:
        click.echo(render_workers(infos))


async def _check_database(app: LiteTask) -> None:
    """Open the broker once (and close it), so a wrong URL fails now rather than on every page."""
    try:
        await app.broker()
    finally:
        await app.aclose()


@cli.command()
@app_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any address but loopback shows every task's data to the "
                   "network (see above).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--token", envvar=TOKEN_ENV, default=None, show_envvar=True,
              help="Token that allows cancel and retry (without one they are off).")
@click.option("--read-only", is_flag=True, help="Hide and refuse cancel and retry.")
@click.option("--log-level", default="info", show_default=True)
def dashboard(app_spec: str | None, url: str | None, host: str, port: int, token: str | None,
              read_only: bool, log_level: str) -> None:
    """Serve the web dashboard (needs the [dashboard] extra).

    The pages show every task's arguments, results, errors and tracebacks to whoever can reach
    them: the token guards only cancel and retry. Keep the default --host 127.0.0.1 (reach it
    through an SSH tunnel, or a proxy with its own authentication); any other address gets a
    warning at start.
    """
    _quiet_logging()
    app = resolve_app(app_spec, url)
    try:
        factory = getattr(app, "dashboard", None)
        if not callable(factory):
            raise CommandFailure(DASHBOARD_MISSING)
        try:
            uvicorn = importlib.import_module("uvicorn")
            asgi = factory(token=token or None, read_only=read_only)
        except ImportError as exc:
            missing = f"missing module {exc.name!r}" if exc.name else str(exc)
            raise CommandFailure(f"{DASHBOARD_MISSING} ({missing})") from None
        with database_errors(app):
            asyncio.run(_check_database(app))
        from .dashboard import exposure_warning

        warning = exposure_warning(host)
        if warning is not None:
            logging.getLogger("litetask_async.dashboard").warning("%s", warning)
        actions = ("off (--read-only)" if read_only else "cancel and retry with the token" if token
                   else f"off (no --token or ${TOKEN_ENV})")
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"litetask dashboard on http://{shown}:{port}/ (actions: {actions})", err=True)
        uvicorn.run(asgi, host=host, port=port, log_level=log_level.lower())
    finally:
        app.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``litetask`` console script; returns the exit code."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="litetask",
                      standalone_mode=False)
    except click.ClickException as exc:  # usage errors (2) and CommandError
        exc.show()
        return exc.exit_code
    except BrokenPipeError:  # ``litetask list | head``: the reader has gone, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except click.exceptions.Abort:
        click.echo("litetask: aborted", err=True)
        return 130
    except TaskNotFound as exc:
        click.echo(f"litetask: error: {exc}", err=True)
        return EXIT_FAILURE
    except UnicodeEncodeError as exc:
        # Lone surrogates come from an argument whose bytes are not UTF-8 (Python's surrogateescape).
        what = "an argument is not valid UTF-8 text" if "surrogates" in exc.reason else "cannot encode text"
        click.echo(f"litetask: error: {what} ({exc})", err=True)
        return EXIT_USAGE
    except (LiteTaskError, ValueError) as exc:  # app, URL, database unreachable, bad value
        click.echo(f"litetask: error: {exc}", err=True)
        return EXIT_USAGE
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
