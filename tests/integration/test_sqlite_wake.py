"""Cross-process wake-ups on SQLite: an idle worker sleeps on a socket that writers poke."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from litetask_async import LiteTask, TaskStatus
from litetask_async.brokers.sqlite import SQLiteBroker
from litetask_async.brokers.sqlite_wake import WakeSender, wake_dir
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def test_a_task_enqueued_by_another_process_wakes_an_idle_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every poll stretched to a minute, only the poke can start the task in time."""
    monkeypatch.setattr(SQLiteBroker, "poll_interval", 60.0)
    monkeypatch.setattr(SQLiteBroker, "slow_poll_interval", 60.0)
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    app = LiteTask(url)
    t = jobs.register(app)
    try:
        async with running_worker(app, poll_interval=60.0):
            await asyncio.sleep(0.5)  # the worker is idle, waiting
            sockets = os.listdir(wake_dir(str(tmp_path / "tasks.db")))
            assert len(sockets) == 1 and sockets[0].startswith(f"{os.getpid()}-")
            code = ("from litetask_async import LiteTask; from tests import jobs; "
                    f"app = LiteTask({url!r}); print(jobs.register(app)['aadd'].delay(2, 3))")
            tid = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                 check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip()
            rec = await app.wait(tid, timeout=20)
            assert rec.status is TaskStatus.COMPLETED and rec.result == 5
            assert t["aadd"].name == rec.name
    finally:
        await app.aclose()
    # closing the app's broker removed its socket
    assert os.listdir(wake_dir(str(tmp_path / "tasks.db"))) == []


def test_a_socket_left_by_a_dead_worker_is_removed_by_the_next_poke(tmp_path: Path) -> None:
    db = str(tmp_path / "tasks.db")
    os.makedirs(wake_dir(db))
    stale = os.path.join(wake_dir(db), "12345-dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(stale)
    s.close()  # its file stays, as after a SIGKILL
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(os.path.join(wake_dir(db), "1-live.sock"))
    live.settimeout(5)
    try:
        sender = WakeSender(db)
        sender.poke()
        assert live.recv(8) == b"!"
        assert not os.path.exists(stale)
        time.sleep(0.01)  # a new mtime for the directory: the next poke lists it again
        sender.poke()
        assert live.recv(8) == b"!"
        sender.close()
    finally:
        live.close()


def test_poking_a_database_nobody_listens_on_is_harmless(tmp_path: Path) -> None:
    sender = WakeSender(str(tmp_path / "nobody.db"))
    sender.poke()  # no directory: nothing to do, no error
    sender.close()
    assert not os.path.exists(wake_dir(str(tmp_path / "nobody.db")))
