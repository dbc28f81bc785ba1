"""ruff and mypy (strict) are part of the test suite, so CI keeps the code clean and typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_clean() -> None:
    r = run("ruff", "check", "litetask_async", "tests", "examples", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_clean() -> None:
    r = run("mypy")
    assert r.returncode == 0, r.stdout + r.stderr
