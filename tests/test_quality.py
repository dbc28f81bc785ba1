"""ruff and mypy (strict) are part of the test suite, so CI keeps the code clean and typed."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the verdicts below depend on: the checkers and the stubs mypy reads.
CHECKERS = ("ruff", "mypy", "asyncpg-stubs", "types-croniter")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_clean() -> None:
    r = run("ruff", "check", "litetask_async", "tests", "examples", "benchmarks")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_clean() -> None:
    r = run("mypy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_checkers_are_pinned_and_installed_as_pinned() -> None:
    """The same checker versions everywhere: pinned exactly in the test extra, tox.ini agreeing,
    and installed here as pinned (else the two tests above judge with other rules)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    pins: dict[str, str] = {}
    for requirement in extra:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*([A-Za-z0-9_.+-]+)", requirement)
        if m is not None:
            pins[m.group(1).lower()] = m.group(2)
    for name in CHECKERS:
        assert name in pins, f"{name} is not pinned with == in pyproject.toml's test extra"
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert tox["testenv:ruff"]["deps"].split() == [f"ruff=={pins['ruff']}"]
    assert tox["testenv:mypy"]["extras"].strip() == "test"  # mypy and its stubs come from the extra
    installed = {name: importlib.metadata.version(name) for name in CHECKERS}
    wanted = {name: pins[name] for name in CHECKERS}
    assert installed == wanted, "reinstall the pinned checkers: pip install -e \".[test]\""
