"""litetask_async.contrib.django and examples/django_site, with real processes.

For each task database (an SQLite file, a fresh PostgreSQL database; Django's own database is an
SQLite file): ``manage.py migrate``, a worker started as documented (``python manage.py
litetask_worker`` with the options of ``litetask worker``), then ``tests/django_site_checks.py``
run by pytest in a process set up with the site's settings (Django's settings are process-wide),
where Django's test client starts reports and watches their progress and ``delay_on_commit`` is
checked against commits and rollbacks. The worker must then stop cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from litetask_async.cli import WORKER_APP_PARAMS
from litetask_async.cli import worker as worker_command

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "examples" / "django_site"


def site_env(litetask_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LITETASK_URL": litetask_url, "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_SQLITE_PATH": str(tmp_path / "django.sqlite3"),
            "PYTHONPATH": os.pathsep.join([str(SITE), str(REPO)])}


def manage(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=SITE, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(params=["sqlite", "postgres"])
def litetask_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_django_site_with_a_worker_process(litetask_url: str, tmp_path: Path) -> None:
    env = site_env(litetask_url, tmp_path)
    migrated = manage(env, "migrate", "--verbosity", "0")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "litetask_worker", "--concurrency", "4", "--processes", "1",
             "--queues", "default", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "5",
             "--grace-period", "5", "--max-rescues", "2", "--log-level", "info"],
            cwd=SITE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        checks = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             str(REPO / "tests" / "django_site_checks.py")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            code = None
    text = log_path.read_text()
    assert checks.returncode == 0, checks.stdout[-6000:] + checks.stderr[-3000:] + "\n--- worker\n" + text[-3000:]
    assert re.search(r"\d+ passed", checks.stdout) and "skipped" not in checks.stdout, checks.stdout
    assert code == 0, f"worker exit {code}\n{text[-3000:]}"
    # The worker knew the site's task (found in reports/tasks.py) and honoured the options.
    assert "concurrency 4" in text and "reports.tasks.build_report" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_manage_py_litetask_worker_has_the_cli_options(tmp_path: Path) -> None:
    env = site_env(f"sqlite:///{tmp_path / 'tasks.db'}", tmp_path)
    helped = manage(env, "litetask_worker", "--help")
    assert helped.returncode == 0, helped.stderr
    options = [o for o in worker_command.params if o.name not in WORKER_APP_PARAMS]
    assert len(options) >= 8
    for option in options:
        assert option.opts[0] in helped.stdout, option.opts
    assert "(default: 8)" in helped.stdout  # --concurrency, the CLI's default

    bad = manage(env, "litetask_worker", "--concurrency", "0")
    assert bad.returncode == 2 and "--concurrency: 0 is not in the range x>=1" in bad.stderr, bad.stderr
    bad = manage(env, "litetask_worker", "--heartbeat-interval", "soon")
    assert bad.returncode == 2 and "--heartbeat-interval" in bad.stderr, bad.stderr
    bad = manage(env, "litetask_worker", "--log-level", "chatty")
    assert bad.returncode == 2 and "log" in bad.stderr.lower() and "Traceback" not in bad.stderr, bad.stderr


def test_a_bad_litetask_setting_stops_django_at_start(tmp_path: Path) -> None:
    env = site_env("redis://localhost/0", tmp_path)
    proc = manage(env, "litetask_worker")
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr and "unknown broker URL scheme 'redis'" in proc.stderr, proc.stderr
