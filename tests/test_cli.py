"""The ``litetask`` command line, run as real subprocesses against SQLite and PostgreSQL."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from litetask_async import LiteTask
from litetask_async.brokers.postgres_sql import LATEST_VERSION
from litetask_async.cli import parse_duration
from litetask_async.dashboard import exposure_warning, is_loopback
from tests.acceptance.helpers import start_worker, stop_worker, wait_until

ROOT = Path(__file__).resolve().parents[1]
NO_SUCH_ID = "0" * 32


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LITETASK_APP", "LITETASK_DASHBOARD_TOKEN")}
    return {**env, "PYTHONPATH": str(ROOT), **(extra or {})}


def litetask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litetask_async.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=cli_env(env))


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the command, check it succeeded quietly, return its stdout."""
    r = litetask(*args, env=env)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def run_ok(calls: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Several commands side by side (they only read): their stdouts by key."""
    with ThreadPoolExecutor(len(calls)) as pool:
        outs = pool.map(lambda args: ok(*args), calls.values())
        return dict(zip(calls, outs, strict=True))


def ok_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(ok(*args, "--json", env=env))


def test_migrate_sqlite_and_postgres(tmp_path: Path, postgres_url: str) -> None:
    r = litetask("migrate", "--url", f"sqlite:///{tmp_path / 'm.db'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.db").exists()
    r = litetask("migrate", "--url", postgres_url)
    assert r.returncode == 0 and f"version {LATEST_VERSION}" in r.stdout, r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["worker", "no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
    (["worker", "tests.xproc_app:nope"], "has no attribute 'nope'"),
    (["worker", "tests.xproc_app"], "expected MODULE:APP"),
    (["worker", "tests.jobs:add"], "not a LiteTask app"),
    (["worker", "--url", "sqlite:///never.db"], "give the app as MODULE:APP"),
    (["worker", "tests.xproc_app:app", "--app", "tests.xproc_app:app"], "give the app once"),
    (["migrate", "--url", "mysql://x@y/z"], "unknown broker URL scheme 'mysql'"),
    (["migrate", "--url", "postgresql://nobody@127.0.0.1:1/nodb"], "cannot connect to PostgreSQL"),
    (["list", "--url", "mysql://x@y/z"], "unknown broker URL scheme 'mysql'"),
    (["stats", "--app", "no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
    (["workers", "--app", "tests.jobs:add"], "not a LiteTask app"),
    (["show", NO_SUCH_ID, "--url", "postgresql://nobody@127.0.0.1:1/nodb"], "is unavailable"),
    (["list", "--url", "sqlite:////no_such_dir_xyz/tasks.db"], "no SQLite database at"),
    (["list"], "which app?"),
    (["list", "--url", "memory://", "--app", "tests.xproc_app:app"], "not both"),
    (["list", "--url", "memory://", "--status", "lost"], "Invalid value for '--status'"),
    (["purge", "--url", "memory://", "--older-than", "7 weeks"], "expected a duration"),
    (["purge", "--url", "memory://", "--older-than", "99999999999d"], "'99999999999d' is too large"),
    (["purge", "--url", "memory://", "--older-than", "36501d"], "at most 36500d (100 years)"),
    (["purge", "--url", "memory://"], "Missing option '--older-than'"),
])
def test_clear_errors_and_exit_code_2(args: list[str], message: str) -> None:
    r = litetask(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_parse_duration() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("30s") == parse_duration("30") == timedelta(seconds=30)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration("0") == timedelta(0)
    assert parse_duration("36500d") == timedelta(days=36_500)
    for bad in ("", "-1d", "7w", "d", "1e3"):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration(bad)
    for huge in ("36500.5d", "99999999999d", "9" * 400, "876001h"):
        with pytest.raises(ValueError, match="is too large"):
            parse_duration(huge)


# Every command that touches the database, with what it needs besides --url.
DB_COMMANDS: list[tuple[str, ...]] = [
    ("list",), ("show", NO_SUCH_ID), ("logs", NO_SUCH_ID), ("cancel", NO_SUCH_ID), ("retry", NO_SUCH_ID),
    ("purge", "--older-than", "1d"), ("stats",), ("workers",), ("migrate",), ("dashboard", "--port", "1"),
    ("wait", NO_SUCH_ID),
]


def test_postgres_refusing_the_role_or_database_is_one_line_for_every_command(postgres_server_url: str) -> None:
    server = make_url(postgres_server_url)
    refused = {
        "no_role": (server.set(username="litetask_no_such_role").render_as_string(hide_password=False),
                    'role "litetask_no_such_role"'),
        "no_db": (server.set(database="litetask_no_such_db").render_as_string(hide_password=False),
                  'database "litetask_no_such_db" does not exist'),
    }
    calls: list[tuple[tuple[str, ...], dict[str, str] | None, str]] = []
    for url, reason in refused.values():
        calls += [((*args, "--url", url), None, reason) for args in DB_COMMANDS]
        calls.append((("worker", "tests.xproc_app:app"), {"LITETASK_URL": url}, reason))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: litetask(*c[0], env=c[1]), calls))
    for (args, _, reason), r in zip(calls, results, strict=True):
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith("litetask: error: cannot use PostgreSQL at postgresql://"), (args, r.stderr)
        assert reason in r.stderr, (args, r.stderr)


ODD = "\udcff"  # the byte 0xff in an argument: not UTF-8, so Python hands it over as a lone surrogate


def test_arguments_that_are_not_utf8_get_a_clear_answer(url: str) -> None:
    """No task can hold such text: the app finds no such task (exit 1, or an empty list) or refuses
    the text (exit 2); either way one line, never a traceback."""
    ok("migrate", "--url", url)
    calls = [(command, ODD, "--url", url) for command in ("show", "logs", "cancel", "retry")]
    calls += [("list", option, ODD, "--url", url) for option in ("--name", "--queue", "--before")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: litetask(*a), calls))
    for args, r in zip(calls, results, strict=True):
        assert "Traceback" not in r.stderr, (args, r.stderr)
        if r.returncode == 0:
            assert args[1] in ("--name", "--queue") and r.stdout.strip() == "no tasks", (args, r.stdout)
            continue
        assert r.returncode in (1, 2), (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("litetask: error: "), (args, r.stderr)
        assert "'\\udcff'" in r.stderr, (args, r.stderr)


def test_console_script_and_help() -> None:
    out = ok("--help")
    for command in ("worker", "migrate", "list", "show", "logs", "cancel", "retry", "purge", "stats",
                    "workers", "dashboard"):
        assert command in out
    exe = shutil.which("litetask")
    if exe is not None:  # installed with pip: the entry point is the same command
        r = subprocess.run([exe, "list", "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "--before" in r.stdout, r.stderr


# --- the whole tour, on SQLite and PostgreSQL ---

PRODUCER = """
import json, sys
from tests.xproc_app import effect_async, fail_once, log_async, log_pool, slow_effect_async
fx, marker = sys.argv[1], sys.argv[2]
ids = {"effects": [effect_async.delay(fx, i) for i in range(4)]}
ids["effects"].append(effect_async.configure(queue="emails").delay(fx, 4))
ids["log_pool"] = log_pool.delay(1)
ids["log_async"] = log_async.delay(2)
ids["fail_once"] = fail_once.delay(marker)
ids["slow"] = slow_effect_async.delay(fx, 99, 60)
ids["later"] = effect_async.configure(countdown=3600).delay(fx, 100)
print(json.dumps(ids))
"""


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _logs_until(task_id: str, url: str, wanted: str) -> str:
    """``litetask logs``, until ``wanted`` shows (a pool task's logs may trail its result)."""
    deadline = time.monotonic() + 10
    while True:
        out = ok("logs", task_id, "--url", url)
        if wanted in out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def test_operate_the_queue_from_the_command_line(tmp_path: Path, url: str) -> None:
    fx, marker = tmp_path / "effects.txt", tmp_path / "marker"
    prod = subprocess.run([sys.executable, "-c", PRODUCER, str(fx), str(marker)], cwd=ROOT,
                          env=cli_env({"LITETASK_URL": url}), capture_output=True, text=True, timeout=60)
    assert prod.returncode == 0, prod.stderr
    ids = json.loads(prod.stdout)
    newest_first = [ids["later"], ids["slow"], ids["fail_once"], ids["log_async"], ids["log_pool"],
                    *reversed(ids["effects"])]

    # Before any worker: all pending, no worker; the app found through $LITETASK_APP.
    stats = ok_json("stats", env={"LITETASK_APP": "tests.xproc_app:app", "LITETASK_URL": url})
    assert stats["totals"] == {"pending": 10, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert stats["workers_alive"] == 0 and stats["oldest_pending_age"] >= 0
    assert "no live workers" in ok("workers", "--url", url)

    worker = start_worker(url, tmp_path / "worker.log", "--processes", "1")
    watcher = LiteTask(url)
    try:
        for tid in [*ids["effects"], ids["log_pool"], ids["log_async"], ids["fail_once"]]:
            watcher.wait_sync(tid, timeout=30)
        wait_until(lambda: getattr(watcher.get_task_sync(ids["slow"]), "status", None) == "running",
                   30, "the slow task to run")
        wait_until(lambda: [w.running for w in watcher.workers_sync()] == [1], 10,
                   "the worker's heartbeat to count the slow task")

        # A snapshot through the read-only commands (run side by side to save time).
        u = ("--url", url)
        snap = run_ok({
            "workers": ("workers", *u, "--json"), "workers_table": ("workers", *u),
            "stats": ("stats", *u, "--json"), "stats_table": ("stats", *u),
            "list_table": ("list", *u, "--limit", "4"), "list_last": ("list", *u, "--before", newest_first[3]),
            "failed": ("list", *u, "--status", "failed", "--json"),
            "emails": ("list", *u, "--queue", "emails", "--json"),
            "by_name": ("list", *u, "--name", "tests.xproc_app.log_pool", "--json"),
            "show": ("show", ids["fail_once"], *u), "show_json": ("show", ids["fail_once"], *u, "--json"),
            "no_logs": ("logs", ids["effects"][0], *u),
        })

        # workers: the one we started, running the slow task
        infos = json.loads(snap["workers"])
        assert len(infos) == 1, infos
        assert infos[0]["pid"] == worker.pid and infos[0]["concurrency"] == 10
        assert infos[0]["queues"] is None and infos[0]["running"] == 1
        datetime.fromisoformat(infos[0]["last_heartbeat"])
        table = snap["workers_table"].splitlines()
        assert table[0].split() == ["ID", "HOST", "PID", "QUEUES", "RUNNING", "CONCURRENCY", "STARTED",
                                    "HEARTBEAT"]
        assert str(worker.pid) in table[1] and infos[0]["id"] in table[1]

        # stats
        stats = json.loads(snap["stats"])
        assert stats["totals"] == {"pending": 1, "running": 1, "completed": 7, "failed": 1, "cancelled": 0}
        assert stats["by_queue"]["emails"]["completed"] == 1
        assert stats["completed_last_minute"] == 7 and stats["failed_last_minute"] == 1
        assert stats["workers_alive"] == 1
        text = snap["stats_table"]
        assert "workers alive:         1" in text and "failed last minute:    1" in text
        assert any(line.split() == ["emails", "0", "0", "1", "0", "0", "1"] for line in text.splitlines())
        assert any(line.split() == ["(all)", "1", "1", "7", "1", "0", "10"] for line in text.splitlines())

        # list: newest first, keyset pages, filters (the app given as --app this time)
        by_app = {"LITETASK_URL": url}
        pages: list[str] = []
        before: list[str] = []
        for expected_len in (4, 4, 2):
            page = ok_json("list", "--app", "tests.xproc_app:app", "--limit", "4", *before, env=by_app)
            assert len(page["tasks"]) == expected_len
            pages += [t["id"] for t in page["tasks"]]
            if expected_len == 4:
                assert page["next_before"] == page["tasks"][-1]["id"]
                before = ["--before", page["next_before"]]
            else:
                assert page["next_before"] is None
        assert pages == newest_first
        out = snap["list_table"].splitlines()
        assert out[0].split() == ["ID", "NAME", "STATUS", "PROGRESS", "QUEUE", "ATTEMPTS", "CREATED",
                                  "FINISHED"]
        assert [line.split()[0] for line in out[1:5]] == newest_first[:4]
        assert out[1].split()[1:4] == ["tests.xproc_app.effect_async", "pending", "0%"]
        assert out[5] == f"more tasks: next page with --before {newest_first[3]}"
        out = snap["list_last"].splitlines()
        assert [line.split()[0] for line in out[1:]] == newest_first[4:]  # the last page: no hint
        assert [t["id"] for t in json.loads(snap["failed"])["tasks"]] == [ids["fail_once"]]
        assert [t["id"] for t in json.loads(snap["emails"])["tasks"]] == [ids["effects"][4]]
        by_name = json.loads(snap["by_name"])["tasks"]
        assert [t["id"] for t in by_name] == [ids["log_pool"]]
        assert datetime.fromisoformat(by_name[0]["finished_at"]) >= datetime.fromisoformat(by_name[0]["created_at"])

        # show: every field, the error with its traceback
        shown = snap["show"]
        for piece in ("status:", "failed", "attempts:", "1 of 1", "RuntimeError: first run: created",
                      "Traceback (most recent call last)", "errors (1, oldest first):", "run at:",
                      "unique key:", "status message:", f'args:           ["{marker}"]'):
            assert piece in shown, (piece, shown)
        rec = json.loads(snap["show_json"])
        assert rec["status"] == "failed" and rec["args"] == [str(marker)]
        assert rec["error"]["type"] == "RuntimeError" and len(rec["errors"]) == 1
        datetime.fromisoformat(rec["created_at"])
        assert "no log records" in snap["no_logs"]

        # logs, from a pool process and from the event loop
        out = _logs_until(ids["log_pool"], url, "pool task warns 1")
        lines = out.splitlines()
        assert lines[0].split() == ["TIME", "LEVEL", "ATTEMPT", "MESSAGE"]
        assert any(line.split()[2:] == ["INFO", "1", "pool", "task", "says", "1"] for line in lines), out
        assert any(line.split()[2:] == ["WARNING", "1", "pool", "task", "warns", "1"] for line in lines), out
        assert "async task says 2" in _logs_until(ids["log_async"], url, "async task says 2")
        records = ok_json("logs", ids["log_async"], "--url", url)
        assert [(r["level"], r["attempt"], r["message"]) for r in records] == [("INFO", 1, "async task says 2")]
        datetime.fromisoformat(records[0]["at"])

        # retry: the failed task runs again and completes; its error history is kept
        assert ok("retry", ids["fail_once"], "--url", url).strip() == f"{ids['fail_once']}: queued again"
        rec2 = watcher.wait_sync(ids["fail_once"], timeout=30)
        assert rec2.status == "completed" and rec2.result == "second time lucky" and len(rec2.errors) == 1
        assert "nothing done" in ok("retry", ids["fail_once"], "--url", url)
        assert ok_json("retry", ids["effects"][0], "--url", url) == {
            "id": ids["effects"][0], "retried": False, "status": "completed"}

        # cancel: running (its worker stops it), pending (at once), finished (nothing to do)
        assert "cancel requested" in ok("cancel", ids["slow"], "--url", url)
        assert watcher.wait_sync(ids["slow"], timeout=30).status == "cancelled"
        assert ok_json("cancel", ids["later"], "--url", url) == {
            "id": ids["later"], "cancelled": True, "status": "cancelled"}
        assert ok("cancel", ids["later"], "--url", url).strip() == (
            f"{ids['later']}: already finished (cancelled): nothing to cancel")
        assert "already finished (completed): nothing to cancel" in ok("cancel", ids["log_pool"], "--url", url)

        # unknown ids: exit 1, one clear line
        calls = [(command, NO_SUCH_ID, "--url", url) for command in ("show", "logs", "cancel", "retry")]
        with ThreadPoolExecutor(len(calls) + 1) as pool:
            results = list(pool.map(lambda a: litetask(*a), [*calls, ("list", "--url", url, "--before", NO_SUCH_ID)]))
        for args, r in zip(calls, results, strict=False):
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert r.stderr.strip() == f"litetask: error: no task with id '{NO_SUCH_ID}'"
        r = results[-1]
        assert r.returncode == 1 and "the 'before' cursor" in r.stderr and "Traceback" not in r.stderr
    finally:
        watcher.close()
        code = stop_worker(worker)
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]

    # purge: finished tasks only, by age
    assert ok("purge", "--url", url, "--older-than", "7d").strip() == "purged 0 finished tasks older than 7d00h"
    assert ok_json("purge", "--url", url, "--older-than", "0") == {"purged": 10, "older_than_seconds": 0.0}
    assert ok("list", "--url", url).strip() == "no tasks"
    assert ok_json("list", "--url", url) == {"tasks": [], "next_before": None}


# --- dashboard ---

DASH_APPS = """
import json, os
from litetask_async import LiteTask

class WithDashboard(LiteTask):
    def dashboard(self, token=None, read_only=False):
        async def asgi(scope, receive, send):
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif msg["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            body = json.dumps({"token": token, "read_only": read_only}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
        return asgi

class ExtraMissing(LiteTask):
    def dashboard(self, token=None, read_only=False):
        raise ModuleNotFoundError("No module named 'starlette'", name="starlette")

url = os.environ["LITETASK_URL"]
app = WithDashboard(url)
missing = ExtraMissing(url)
"""


@pytest.fixture
def dash_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "dash_apps.py").write_text(textwrap.dedent(DASH_APPS))
    return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "LITETASK_URL": f"sqlite:///{tmp_path / 'd.db'}"}


def test_dashboard_without_its_extra_says_what_to_install(dash_env: dict[str, str]) -> None:
    for spec in ["dash_apps:missing"]:
        r = subprocess.run([sys.executable, "-m", "litetask_async.cli", "dashboard", "--app", spec, "--port", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, env=cli_env(dash_env))
        assert r.returncode == 1, (spec, r.stdout, r.stderr)
        assert "the dashboard needs: pip install litetask_async[dashboard] (missing module 'starlette')" in r.stderr
        assert "Traceback" not in r.stderr


def _serve_once(args: list[str], env: dict[str, str], path: str = "/",
                then: Callable[[int], None] | None = None) -> tuple[int, bytes, str]:
    """``litetask dashboard ...`` on a free port: one GET, then ``then(port)``, then SIGTERM;
    (status, body, output)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "litetask_async.cli", "dashboard", *args, "--port", str(port)],
                            cwd=ROOT, env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status, body = 0, b""
    try:
        deadline = time.monotonic() + 20
        while not status and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    status, body = resp.status, resp.read()
            except OSError:
                time.sleep(0.1)
        if then is not None and status:
            then(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    # uvicorn shuts down cleanly, then re-raises the signal it caught (recent versions)
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Traceback" not in out, out
    return status, body, out


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="uvicorn is not installed")
def test_dashboard_serves_the_apps_asgi_app(dash_env: dict[str, str]) -> None:
    status, body, out = _serve_once(["--app", "dash_apps:app", "--read-only"],
                                    {**dash_env, "LITETASK_DASHBOARD_TOKEN": "s3cret"})
    assert status == 200 and json.loads(body) == {"token": "s3cret", "read_only": True}, out
    assert "actions: off (--read-only)" in out and "Application shutdown complete" in out


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("starlette") is None,
                    reason="the dashboard extra is not installed")
def test_dashboard_serves_the_real_dashboard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'real.db'}"
    ok("migrate", "--url", url)
    status, body, out = _serve_once(["--url", url, "--token", "t0ken"], {})
    assert status == 200 and body, out
    assert "actions: cancel and retry with the token" in out
    assert "WARNING" not in out  # loopback: nothing to warn about


def test_dashboard_help_says_the_pages_are_open() -> None:
    text = " ".join(ok("dashboard", "--help").split())
    assert "show every task's arguments, results, errors and tracebacks to whoever can reach them" in text
    assert "the token guards only cancel and retry" in text and "127.0.0.1" in text


def test_exposure_warning_only_beyond_loopback() -> None:
    for host in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host) and exposure_warning(host) is None, host
    for host in ("0.0.0.0", "::", "", "192.168.1.20", "dashboard.example.com"):
        assert not is_loopback(host), host
        warning = exposure_warning(host)
        assert warning is not None and "arguments, results and tracebacks" in warning, host


@pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("starlette") is None,
                    reason="the dashboard extra is not installed")
def test_dashboard_beyond_loopback_warns_and_takes_a_non_ascii_token(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'open.db'}"
    producer = LiteTask(url)
    try:
        tid = producer.enqueue("tests.jobs.aadd", 1, 2)
    finally:
        producer.close()
    token = "pässwörd"
    answers: list[tuple[int, str | None]] = []

    def post_with_utf8_header(port: int) -> None:
        # http.client sends bytes as they are: the token's UTF-8 encoding, as curl or a browser would.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", f"/tasks/{tid}/cancel", headers={"X-LiteTask-Token": token.encode()})
            resp = conn.getresponse()
            resp.read()
            answers.append((resp.status, resp.getheader("location")))
        finally:
            conn.close()

    status, _, out = _serve_once(["--url", url, "--host", "0.0.0.0", "--token", token], {},
                                 then=post_with_utf8_header)
    assert status == 200, out
    warnings = [line for line in out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, out
    assert warnings[0].startswith("litetask: WARNING litetask_async.dashboard: the dashboard listens on 0.0.0.0")
    assert "every task's arguments, results and tracebacks" in warnings[0]
    assert answers == [(303, f"/tasks/{tid}?notice=cancelled")], out
    watcher = LiteTask(url)
    try:
        assert watcher.get_task_sync(tid).status == "cancelled"  # type: ignore[union-attr]
    finally:
        watcher.close()


def test_wait_shows_progress_then_prints_the_outcome(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wait.db'}"
    env = {"LITETASK_URL": url}
    producer = textwrap.dedent(f"""
        from tests.xproc_app import fail_once, stepper
        print(stepper.delay(5, 0.4), stepper.delay(3, 0.1), fail_once.delay({str(tmp_path / "marker")!r}),
              stepper.delay(5, 5.0))
    """)
    worker = start_worker(url, tmp_path / "w.log")
    try:
        r = subprocess.run([sys.executable, "-c", producer], cwd=ROOT, env=cli_env(env), capture_output=True,
                           text=True, timeout=60, check=True)
        slow, quick, failing, very_slow = r.stdout.split()

        done = litetask("wait", slow, "--url", url, "--interval", "0.05")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "5"
        lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
        percents = [int(line.split("]")[1].split("%")[0]) for line in lines]
        assert percents == sorted(percents) and percents[-1] == 100, done.stderr
        assert any(0 < p < 100 for p in percents), done.stderr  # it was seen moving
        assert any("step 2 of 5" in line for line in lines), done.stderr
        assert lines[-1].endswith("100%  completed  step 5 of 5"), lines[-1]

        as_json = litetask("wait", quick, "--url", url, "--json")
        assert as_json.returncode == 0 and json.loads(as_json.stdout)["status"] == "completed", as_json

        failed = litetask("wait", failing, "--url", url)
        assert failed.returncode == 1 and failed.stdout == "", failed
        assert "RuntimeError: first run" in failed.stderr and "Traceback" in failed.stderr

        timed_out = litetask("wait", very_slow, "--url", url, "--timeout", "0.5")
        assert timed_out.returncode == 2, timed_out
        assert "timed out after 0.5s" in timed_out.stderr and "still running" in timed_out.stderr

        unknown = litetask("wait", NO_SUCH_ID, "--url", url)
        assert unknown.returncode == 1 and "no task with id" in unknown.stderr, unknown
    finally:
        stop_worker(worker)


def test_sigterm_while_the_worker_starts_stops_it_cleanly(tmp_path: Path) -> None:
    """`litetask worker` holds SIGTERM back while it imports the app and connects: a SIGTERM then
    stops the worker as one at work would be stopped (exit 0), instead of killing the process."""
    (tmp_path / "slow_start_app.py").write_text(textwrap.dedent(f"""
        import time
        from litetask_async import LiteTask
        time.sleep(3)  # a slow import: the SIGTERM arrives meanwhile
        app = LiteTask({f"sqlite:///{tmp_path / 'tasks.db'}"!r})

        @app.task
        async def noop() -> None: ...
    """))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-m", "litetask_async.cli", "worker", "slow_start_app:app"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)  # the package is imported, the app module is sleeping
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped after 0 tasks" in out, out
