"""The bad-input matrix: each case gives a clear error and leaves the store consistent."""

from __future__ import annotations

import datetime
import re

import pytest

from litetask_async import ConfigurationError, LiteTask, SerializationError, TaskNotFound, TaskStatus
from tests import jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("url", "message"), [
    ("", "not a broker URL"),
    ("tasks.db", "not a broker URL"),
    ("redis://localhost:6379/0", "unknown broker URL scheme 'redis'"),
    ("mysql://root@localhost/db", "unknown broker URL scheme 'mysql'"),
    ("sqlite:///:memory:", "use 'memory://' instead"),
    ("sqlite://somehost/tasks.db", "has a host part"),
    ("sqlite:///t.db?busy_timeout=-1", "busy_timeout must be positive"),
    ("postgresql+psycopg2://u@h/db", "not a PostgreSQL URL"),
    ("postgresql://u@h:notaport/db", "not a valid PostgreSQL URL"),
])
def test_wrong_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        LiteTask(url)


async def test_unreachable_postgres_is_a_clear_error() -> None:
    from litetask_async import BrokerUnavailable

    app = LiteTask("postgresql://nobody@127.0.0.1:1/nodb")
    with pytest.raises(BrokerUnavailable, match="unavailable"):
        await app.broker()


@pytest.mark.parametrize("bad", [
    object(),
    {1, 2},
    b"bytes",
    datetime.datetime(2026, 1, 1),
    float("inf"),
    {"nested": [1, {"deep": object()}]},
    {("tuple", "key"): 1},
    "a NUL \x00 character",
])
async def test_unserialisable_arguments_write_nothing(app: LiteTask, bad: object) -> None:
    t = jobs.register(app)
    with pytest.raises(SerializationError) as info:
        await t["aadd"].adelay(bad, 1)
    assert "tests.jobs.aadd" in str(info.value) and ("JSON" in str(info.value) or "NUL" in str(info.value))
    assert isinstance(info.value, TypeError)
    b = await app.broker()
    assert await b.claim("w", 1, 10) == []


async def test_huge_payload_round_trips(app: LiteTask) -> None:
    t = jobs.register(app)
    big = "x" * 5_000_000
    async with running_worker(app):
        tid = await t["aadd"].adelay(big, "y")
        rec = await app.wait(tid, 60)
    assert rec.status is TaskStatus.COMPLETED and rec.result == big + "y"
    assert rec.args == [big, "y"]


@pytest.mark.parametrize("task_id", ["", "nope", "'; DROP TABLE litetask_tasks; --", "x" * 10_000, "ünïcødé"])
async def test_invalid_ids(app: LiteTask, task_id: str) -> None:
    t = jobs.register(app)
    assert await app.get_task(task_id) is None
    with pytest.raises(TaskNotFound, match="no task with id"):
        await app.cancel(task_id)
    with pytest.raises(TaskNotFound):
        await app.wait(task_id, timeout=1)
    # the store is intact and works
    async with running_worker(app):
        rec = await app.wait(await t["aadd"].adelay(2, 2), 20)
    assert rec.result == 4


async def test_non_string_id_is_a_type_error(app: LiteTask) -> None:
    for call in (app.get_task, app.cancel, app.wait):
        with pytest.raises(TypeError, match="task ids are strings"):
            await call(123)  # type: ignore[arg-type]


async def test_error_with_nul_character_is_stored(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        bad = await app.wait(await t["fail_nul"].adelay(), 20)
        good = await app.wait(await t["aadd"].adelay(1, 1), 20)
    assert bad.status is TaskStatus.FAILED and bad.error is not None
    assert bad.error["message"] == "bad byte \\x00 here"  # shown, not lost
    assert good.status is TaskStatus.COMPLETED
