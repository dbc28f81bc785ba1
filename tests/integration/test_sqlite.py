"""SQLite-specific behaviour: group commit, WAL, file errors."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from litetask_async import ConfigurationError, LiteTask
from litetask_async.brokers.sqlite import writer_for
from tests import jobs

pytestmark = pytest.mark.anyio


async def test_thousand_concurrent_enqueues_cost_a_few_commits(tmp_path: Path) -> None:
    app = LiteTask(f"sqlite:///{tmp_path / 'gc.db'}")
    t = jobs.register(app)
    await app.broker()
    writer = writer_for(str((tmp_path / "gc.db").resolve()))
    before = writer.commits
    ids = await asyncio.gather(*(t["aadd"].adelay(i, i) for i in range(1000)))
    commits = writer.commits - before
    assert len(set(ids)) == 1000
    assert commits <= 20, f"1,000 concurrent enqueues took {commits} commits"
    with sqlite3.connect(tmp_path / "gc.db") as conn:
        assert conn.execute("SELECT count(*) FROM litetask_tasks").fetchone()[0] == 1000
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await app.aclose()


async def test_one_failing_write_does_not_undo_its_batch_neighbours(tmp_path: Path) -> None:
    app = LiteTask(f"sqlite:///{tmp_path / 'n.db'}")
    t = jobs.register(app)
    b = await app.broker()
    first = t["aadd"].prepare([1, 1], {})
    await b.enqueue([first])
    results = await asyncio.gather(
        *(t["aadd"].adelay(i, i) for i in range(50)), b.enqueue([first]), return_exceptions=True)
    assert isinstance(results[-1], sqlite3.IntegrityError)
    assert all(isinstance(r, str) for r in results[:-1])
    with sqlite3.connect(tmp_path / "n.db") as conn:
        assert conn.execute("SELECT count(*) FROM litetask_tasks").fetchone()[0] == 51
    await app.aclose()


@pytest.mark.parametrize("url", [
    "sqlite:///:memory:",
    "sqlite://host/x.db",
    "mysql://u@h/db",
    "sqlite:///x.db?busy_timeout=soon",
    "sqlite:///x.db?journal=off",
    "no-scheme",
])
def test_bad_urls_are_refused_at_once(url: str) -> None:
    with pytest.raises(ConfigurationError):
        LiteTask(url)


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    app = LiteTask(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await app.broker()
