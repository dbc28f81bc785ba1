"""A task enqueued from inside other tasks (chains): the app comes from LITETASK_CHAIN_URL so a
pool process can rebuild it."""

from __future__ import annotations

import os
from typing import Any

from litetask_async import LiteTask
from tests.jobs import aadd

_apps: dict[str, Any] = {}


def app_task() -> Any:
    url = os.environ["LITETASK_CHAIN_URL"]
    if url not in _apps:
        app = LiteTask(url)
        _apps[url] = app.task(aadd)
    return _apps[url]
