"""The documentation site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``: no broken link
or anchor, no missing API reference target, no docstring the handler warns about; and it has the
pages issue 12 asks for, with the whole public API in its reference."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import litetask_async

ROOT = Path(__file__).resolve().parents[1]

# nav title (as in mkdocs.yml) -> page, for every page the issue lists
REQUIRED_PAGES = {
    "Getting started": "getting-started.md",
    "Concepts": "concepts.md",
    "Brokers": "brokers.md",
    "Scheduling": "scheduling.md",
    "Reliability guarantees": "reliability.md",
    "Operating it": "operating.md",
    "Deploying on many machines": "deploying.md",
    "Benchmarks": "benchmarks.md",
    "Moving from Celery, huey, pgqueuer": "migrating.md",
}


class _Loader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!!python/name:`` tags name Python objects, as plain data."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    return config


def _nav_entries(nav: list[Any]) -> list[tuple[str | None, str]]:
    """(title, page) for every page of the nav, nested sections included."""
    found: list[tuple[str | None, str]] = []
    for item in nav:
        if isinstance(item, str):
            found.append((None, item))
            continue
        for title, value in item.items():
            if isinstance(value, list):
                found += _nav_entries(value)
            else:
                found.append((title, value))
    return found


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "app" / "index.html").exists()


def test_nav_has_every_page_of_the_issue() -> None:
    entries = _nav_entries(_config()["nav"])
    titles = {title: page for title, page in entries if title is not None}
    for title, page in REQUIRED_PAGES.items():
        assert titles.get(title) == page, f"nav entry {title!r} -> {page!r} missing from mkdocs.yml"
    pages = [page for _, page in entries]
    assert any(page.startswith("reference/") for page in pages), "no API reference in the nav"
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page
    # every markdown page is in the nav (mkdocs --strict reports only broken links, not orphans)
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == set(pages)


def test_concepts_draws_the_task_life() -> None:
    text = (ROOT / "docs" / "concepts.md").read_text()
    diagram = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert diagram is not None, "concepts.md has no mermaid diagram"
    for status in ("pending", "running", "completed", "failed", "cancelled"):
        assert status in diagram.group(1)


def test_api_reference_covers_the_public_api() -> None:
    reference = "\n".join(p.read_text() for p in (ROOT / "docs" / "reference").glob("*.md"))
    directives = set(re.findall(r"^::: ([\w.]+)", reference, re.M))
    exception_members = set(re.findall(r"^\s+- (\w+)$", (ROOT / "docs" / "reference" / "exceptions.md").read_text(),
                                       re.M))
    for name in litetask_async.__all__:
        assert f"litetask_async.{name}" in directives or name in exception_members, (
            f"{name} is not in the API reference (docs/reference/)")


def test_docs_pins_agree_and_are_installed() -> None:
    """The docs extra and the docs packages of the test extra are the same exact pins, and installed."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    docs = extras["docs"]
    assert docs, "the docs extra is empty"
    assert set(docs) <= set(extras["test"])
    for requirement in docs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[\w,]+\])?==([A-Za-z0-9_.+-]+)", requirement)
        assert m is not None, f"{requirement!r} is not pinned with =="
        try:
            installed = importlib.metadata.version(m.group(1))
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{m.group(1)} is not installed: pip install -e \".[test]\"")
        assert installed == m.group(2), f"{m.group(1)} {installed} installed, {m.group(2)} pinned"
