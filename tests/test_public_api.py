"""The public surface: names in __all__, docstrings, typing marker."""

from __future__ import annotations

import inspect
from pathlib import Path

import litetask_async
from litetask_async import LiteTask, Task


def test_all_matches_public_names() -> None:
    public = {n for n in dir(litetask_async) if not n.startswith("_") and n[0].isupper()}
    assert set(litetask_async.__all__) == public


def test_contract_names_exist() -> None:
    for name in ["task", "get_task", "wait", "cancel", "run_worker", "get_task_sync", "wait_sync",
                 "cancel_sync", "migrate", "aenqueue", "enqueue", "close", "aclose"]:
        assert callable(getattr(LiteTask, name)), name
    for name in ["delay", "adelay", "delay_many", "adelay_many"]:
        assert callable(getattr(Task, name)), name


def test_public_names_have_docstrings() -> None:
    for name in litetask_async.__all__:
        obj = getattr(litetask_async, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member):
                    assert inspect.getdoc(member), f"{name}.{attr}"


def test_py_typed_is_shipped() -> None:
    assert (Path(litetask_async.__file__).parent / "py.typed").exists()
