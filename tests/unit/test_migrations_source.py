"""Schema migrations are numbered 1..N with no number used twice (a duplicate key in a dict
literal would silently drop a migration)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BROKERS = Path(__file__).resolve().parents[2] / "litetask_async" / "brokers"


@pytest.mark.parametrize("module", ["sqlite_sql.py", "postgres_sql.py"])
def test_migrations_are_numbered_once_each(module: str) -> None:
    tree = ast.parse((BROKERS / module).read_text())
    [literal] = [node.value for node in ast.walk(tree)
                 if isinstance(node, ast.AnnAssign | ast.Assign) and isinstance(node.value, ast.Dict)
                 and any(isinstance(t, ast.Name) and t.id == "MIGRATIONS"
                         for t in ([node.target] if isinstance(node, ast.AnnAssign) else node.targets))]
    keys = [k.value for k in literal.keys if isinstance(k, ast.Constant)]
    assert keys == list(range(1, len(keys) + 1)), keys
