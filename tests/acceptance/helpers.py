"""Worker subprocesses and side-effect bookkeeping for the acceptance tests."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_worker(url: str, log: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``litetask worker tests.xproc_app:app`` in a subprocess, with short heartbeats."""
    env = {**os.environ, "LITETASK_URL": url, "PYTHONPATH": str(ROOT), **(env or {})}
    args = [sys.executable, "-m", "litetask_async.cli", "worker", "tests.xproc_app:app",
            "--concurrency", "10", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3",
            "--grace-period", "5", *extra]
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.litetask_log = log  # type: ignore[attr-defined]
    return proc


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, once the worker has started (a SIGTERM while Python still imports the package,
    before `litetask worker` holds the signal back, kills the process: exit -15), then wait."""
    log: Path | None = getattr(proc, "litetask_log", None)
    if log is not None:
        wait_until(lambda: proc.poll() is not None or "started: concurrency" in log.read_text(errors="replace"),
                   60, "the worker to start before stopping it")
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("worker did not stop within its grace period after SIGTERM") from None


def effects(path: Path) -> collections.Counter[int]:
    """How many times each task number's side effect happened."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)


def effect_pids(path: Path) -> dict[int, set[int]]:
    out: dict[int, set[int]] = collections.defaultdict(set)
    for line in path.read_text().splitlines():
        n, pid = line.split()
        out[int(n)].add(int(pid))
    return out


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
