"""The examples in examples/ work as documented.

- Every script runs as ``python examples/<script>.py`` in a fresh directory, exits 0 and prints the
  results it promises (checked on the text, not only the exit code).
- The FastAPI app is driven through its ASGI app, with a real worker for the same SQLite file
  running on the test's event loop; and as documented, behind uvicorn with a worker process,
  over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from litetask_async.worker import Worker

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FASTAPI_MODULE = "examples.fastapi_app"

# script -> regular expressions its stdout must match (multiline)
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        r"^enqueued add -> [0-9a-f]{32}$",
        r"^enqueued greet -> [0-9a-f]{32}$",
        r"^crunch \[#{30}\] 100% \(completed\)$",
        r"^add\(2, 3\) = 5$",
        r"^greet\('litetask'\) = 'Hello, litetask!'$",
        r"^crunch\(60\) = 70210$",
        r"^done in \d+\.\ds$",
    ],
    "seed_1_hello_world.py": [
        r"^Hello World \(from pool process \d+\)$",
        r"^task hello-world [0-9a-f]{32}: completed, result=None \(this script is process \d+\)$",
    ],
    "seed_2_add_two_numbers.py": [
        r"^stored input: \[\{'a': 2, 'b': 3\}\], stored result: \{'sum': 5\}$",
        r"^2 \+ 3 = 5$",
    ],
    "seed_3_add_two_numbers_pydantic.py": [r"^2 \+ 3 = 5$"],
    "seed_4_using_db_inside_task.py": [
        r"^task result: \{'id': 1, 'value': '123', 'pid': \d+, 'count': 1\}$",
        r"^row in seed_4_app\.db: id=1 value='123' written by process \d+ \(this script is process \d+\)$",
    ],
    "seed_5_manual_progress.py": [
        r"^progress: 100% \(completed\)$",
        r"^final progress: 100$",
    ],
}


def run_example(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=cwd, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, (
        f"{script} exited {proc.returncode} after {elapsed:.1f}s\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def test_every_script_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"fastapi_app.py"}
    assert scripts == set(EXPECTED)
    assert set(EXTRA_CHECKS) <= scripts


def _progress_values(stdout: str, pattern: str) -> list[int]:
    return [int(m) for m in re.findall(pattern, stdout, re.MULTILINE)]


def _assert_progress_moves(seen: list[int], stdout: str) -> None:
    assert seen == sorted(seen) and seen[-1] == 100, stdout
    assert any(0 < p < 100 for p in seen), f"no progress between 0 and 100 was shown:\n{stdout}"


def check_quickstart(proc: subprocess.CompletedProcess[str], cwd: Path) -> None:
    _assert_progress_moves(_progress_values(proc.stdout, r"^crunch \[[#.]{30}\]\s+(\d+)%"), proc.stdout)
    assert (cwd / "litetask.db").is_file()  # the default place: the current directory
    # A second run starts from an empty database again and works the same.
    again = run_example("quickstart.py", cwd)
    assert re.search(r"^add\(2, 3\) = 5$", again.stdout, re.MULTILINE), again.stdout


def check_seed_1(proc: subprocess.CompletedProcess[str], cwd: Path) -> None:
    # The task printed from a pool process, not from the script's own process.
    # (Not checked against record.pid: that one sometimes still names the worker's process.)
    pool = re.search(r"^Hello World \(from pool process (\d+)\)$", proc.stdout, re.MULTILINE)
    script = re.search(r"\(this script is process (\d+)\)$", proc.stdout, re.MULTILINE)
    assert pool and script, proc.stdout
    assert pool.group(1) != script.group(1), proc.stdout


def check_seed_4(proc: subprocess.CompletedProcess[str], cwd: Path) -> None:
    with contextlib.closing(sqlite3.connect(cwd / "seed_4_app.db")) as conn:
        rows = conn.execute("SELECT id, value FROM test_table").fetchall()
    assert rows == [(1, "123")]


def check_seed_5(proc: subprocess.CompletedProcess[str], cwd: Path) -> None:
    _assert_progress_moves(_progress_values(proc.stdout, r"^progress:\s+(\d+)%"), proc.stdout)


EXTRA_CHECKS: dict[str, Callable[[subprocess.CompletedProcess[str], Path], None]] = {
    "quickstart.py": check_quickstart,
    "seed_1_hello_world.py": check_seed_1,
    "seed_4_using_db_inside_task.py": check_seed_4,
    "seed_5_manual_progress.py": check_seed_5,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_script(script: str, tmp_path: Path) -> None:
    proc = run_example(script, tmp_path)
    for pattern in EXPECTED[script]:
        assert re.search(pattern, proc.stdout, re.MULTILINE), (
            f"{script}: no line matches {pattern!r}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    assert "Traceback" not in proc.stderr, proc.stderr
    check = EXTRA_CHECKS.get(script)
    if check is not None:
        check(proc, tmp_path)


# --- the FastAPI app -----------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """examples.fastapi_app imported afresh, so that it reads LITETASK_URL (a tmp SQLite file)."""
    monkeypatch.setenv("LITETASK_URL", f"sqlite:///{tmp_path / 'reports.db'}")
    monkeypatch.syspath_prepend(str(REPO))
    sys.modules.pop(FASTAPI_MODULE, None)
    module = importlib.import_module(FASTAPI_MODULE)
    try:
        assert module.tasks.url == f"sqlite:///{tmp_path / 'reports.db'}"
        yield module
    finally:
        sys.modules.pop(FASTAPI_MODULE, None)


async def poll(client: httpx.AsyncClient, task_id: str, until: Callable[[dict[str, Any]], bool],
               timeout: float = 20.0, seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """GET the task until ``until(body)`` holds; return that body."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/reports/{task_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if seen is not None:
            seen.append(body)
        if until(body):
            return body
        assert time.monotonic() < deadline, f"gave up waiting; last answer: {body}"
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_fastapi_app(reports: ModuleType) -> None:
    transport = httpx.ASGITransport(app=reports.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # Bad input is refused by the model.
            r = await client.post("/reports", json={"title": "", "rows": 0})
            assert r.status_code == 422

            # Cancelling a pending task (no worker yet): it never runs.
            r = await client.post("/reports", json={"title": "never", "rows": 10, "seconds": 0.1})
            assert r.status_code == 202, r.text
            pending_id = r.json()["task_id"]
            r = await client.delete(f"/reports/{pending_id}")
            assert r.status_code == 202, r.text
            assert r.json() == {"task_id": pending_id, "cancelled": True, "status": "cancelled"}

            # Unknown ids.
            r = await client.get("/reports/0123456789abcdef")
            assert r.status_code == 404
            r = await client.delete("/reports/0123456789abcdef")
            assert r.status_code == 404

            worker = Worker(reports.tasks, install_signal_handlers=False, heartbeat_interval=0.2,
                            heartbeat_timeout=5.0, grace_period=5.0)
            running = asyncio.create_task(worker.run())
            try:
                # A report runs to completion; its progress moves on the way.
                r = await client.post("/reports", json={"title": "Q3", "rows": 10, "seconds": 1.5})
                assert r.status_code == 202, r.text
                assert set(r.json()) == {"task_id"}
                done_id = r.json()["task_id"]
                seen: list[dict[str, Any]] = []
                body = await poll(client, done_id, lambda b: b["status"] not in ("pending", "running"), seen=seen)
                assert body["status"] == "completed", body
                assert body["progress"] == 100
                assert body["result"] == {"title": "Q3", "rows": 10, "total": 55, "mean": 5.5}
                assert body["error"] is None
                assert body["started_at"] is not None and body["finished_at"] is not None
                progresses = [b["progress"] for b in seen]
                assert progresses == sorted(progresses)
                assert any(0 < p < 100 for p in progresses), progresses

                # Cancelling a finished task changes nothing.
                r = await client.delete(f"/reports/{done_id}")
                assert r.status_code == 409, r.text
                assert r.json() == {"task_id": done_id, "cancelled": False, "status": "completed"}

                # Cancelling a running task stops it.
                r = await client.post("/reports", json={"title": "long", "rows": 10, "seconds": 60})
                assert r.status_code == 202, r.text
                long_id = r.json()["task_id"]
                await poll(client, long_id, lambda b: b["status"] == "running")
                r = await client.delete(f"/reports/{long_id}")
                assert r.status_code == 202, r.text
                assert r.json()["cancelled"] is True
                body = await poll(client, long_id, lambda b: b["status"] != "running", timeout=10)
                assert body["status"] == "cancelled", body
                assert body["result"] is None
                assert body["error"]["type"] == "Cancelled"
            finally:
                worker.stop()
                await asyncio.wait_for(running, 30)

            # The pending task that was cancelled never ran.
            body = (await client.get(f"/reports/{pending_id}")).json()
            assert body["status"] == "cancelled" and body["started_at"] is None, body
    finally:
        await reports.tasks.aclose()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_fastapi_app_behind_uvicorn_with_a_worker_process(tmp_path: Path) -> None:
    """As documented: `uvicorn examples.fastapi_app:app` and `python -m examples.fastapi_app` (a
    worker) in two processes on one SQLite file, driven over real HTTP."""
    import os
    import signal

    env = {**os.environ, "LITETASK_URL": f"sqlite:///{tmp_path / 'reports.db'}", "PYTHONPATH": str(REPO)}
    port = _free_port()
    log = (tmp_path / "procs.log").open("wb")
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)],
                           cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "examples.fastapi_app"], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 30
            while True:  # until uvicorn listens
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/docs")).status_code == 200:
                        break
                assert time.monotonic() < deadline and api.poll() is None, (tmp_path / "procs.log").read_text()
                await asyncio.sleep(0.1)
            r = await client.post("/reports", json={"title": "Q4", "rows": 4, "seconds": 0.3})
            assert r.status_code == 202, r.text
            body = await poll(client, r.json()["task_id"], lambda b: b["status"] not in ("pending", "running"))
            assert body["status"] == "completed" and body["result"]["total"] == 10, body
            assert (await client.get("/reports/0123")).status_code == 404
    finally:
        for proc in (api, worker):
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in (api, worker)]
        log.close()
    text = (tmp_path / "procs.log").read_text()
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
    assert codes[0] in (0, -signal.SIGTERM) and codes[1] == 0, (codes, text[-3000:])
    assert "Application shutdown complete" in text, text[-3000:]
