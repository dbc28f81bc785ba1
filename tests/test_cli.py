"""The ``litetask`` command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from litetask_async.brokers.postgres_sql import LATEST_VERSION

ROOT = Path(__file__).resolve().parents[1]


def litetask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "litetask_async.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=env)


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
    (["migrate", "--url", "mysql://x@y/z"], "unknown broker URL scheme 'mysql'"),
    (["migrate", "--url", "postgresql://nobody@127.0.0.1:1/nodb"], "cannot connect to PostgreSQL"),
])
def test_clear_errors_and_nonzero_exit(args: list[str], message: str) -> None:
    r = litetask(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
