"""The bad-input matrix: each case gives a clear error and leaves the store consistent.

Every broker where the case applies (the ``app`` fixture: memory, SQLite, PostgreSQL). Cases that
live at another edge are tested there:

- the command line (PostgreSQL refusing the URL's role or database, a purge duration too large,
  ids that are not UTF-8): tests/test_cli.py;
- the dashboard (non-ASCII tokens in headers, NUL in ids and filters, payloads too deep to
  decode, PostgreSQL refusing the role): tests/test_dashboard.py;
- a pool process that dies or is killed, under CPU load too: tests/acceptance/test_pool_faults.py;
- memory:// used from a pool process: tests/conformance/test_scheduling.py (follow-ups);
- a pool task's real start time and pid: tests/conformance/test_app.py.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from litetask_async import ConfigurationError, LiteTask, Retry, SerializationError, TaskNotFound, TaskStatus
from litetask_async.records import LATEST_RUN_AT, NewTask
from tests import bad_input_jobs, jobs
from tests.conftest import running_worker

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("url", "message"), [
    ("", "not a broker URL"),
    ("tasks.db", "not a broker URL"),
    ("redis://localhost:6379/0", "unknown broker URL scheme 'redis'"),
    ("mysql://root@localhost/db", "unknown broker URL scheme 'mysql'"),
    ("sqlite:///:memory:", "use 'memory://' instead"),
    ("sqlite://somehost/tasks.db", "has a host part, but SQLite has no hosts: write 'sqlite:///somehost/tasks.db'"),
    ("sqlite://localhost", "has a host part"),
    ("sqlite://user@host/tasks.db", "has a host part"),
    ("sqlite://:memory:", "use 'memory://' instead"),
    ("sqlite:///t.db?busy_timeout=-1", "busy_timeout must be positive"),
    ("sqlite:///t.db?busy_timeout=nan", "busy_timeout must be positive and at most 86400 seconds"),
    ("sqlite:///t.db?busy_timeout=inf", "busy_timeout must be positive and at most 86400 seconds"),
    ("sqlite:///t.db?busy_timeout=1e300", "busy_timeout must be positive and at most 86400 seconds"),
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


# --- URLs ---


def test_sqlite_url_without_third_slash_is_a_relative_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://litetask.db", "sqlite+aiosqlite://litetask.db", "sqlite://litetask.db?busy_timeout=5"):
        app = LiteTask(url)
        assert app._sqlite is not None and app._sqlite[0] == str(tmp_path / "litetask.db")
        assert app._sqlite == LiteTask(url.replace("://", ":///"))._sqlite
    app = LiteTask("sqlite://litetask.db")
    t = jobs.register(app)
    tid = t["add"].delay(1, 2)
    assert (tmp_path / "litetask.db").exists()
    rec = app.get_task_sync(tid)
    assert rec is not None and rec.args == [1, 2]
    app.close()


def test_postgres_password_is_masked() -> None:
    app = LiteTask("postgresql://alice:s3cr%40t@db.example:5432/app?sslmode=require")
    assert repr(app) == "LiteTask('postgresql://alice:***@db.example:5432/app?sslmode=require')"
    assert repr(LiteTask("postgresql://alice@db.example/app")) == "LiteTask('postgresql://alice@db.example/app')"
    for url in ("postgresql+psycopg2://alice:s3cret@h/db", "mysql://alice:s3cret@h/db",
                "postgresql://alice:s3cret@h:notaport/db"):
        with pytest.raises(ConfigurationError) as info:
            LiteTask(url)
        assert "s3cret" not in str(info.value) and "alice:***@h" in str(info.value)


# --- countdown, eta and task options that would store unreadable rows ---


@pytest.mark.parametrize("options", [
    {"countdown": math.inf},
    {"countdown": math.nan},
    {"countdown": -1},
    {"countdown": 1e300},
    {"countdown": 2.6e11},
    {"countdown": datetime.timedelta.max},
    {"eta": datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)},
    {"eta": datetime.datetime(9000, 1, 1, tzinfo=datetime.UTC)},
    {"eta": datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5)))},
    {"priority": 2**31},
    {"priority": -(2**31) - 1},
])
async def test_countdown_eta_and_priority_out_of_range_are_refused(app: LiteTask, options: dict[str, Any]) -> None:
    t = jobs.register(app)
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        t["aadd"].configure(**options)
    b = await app.broker()
    assert await b.claim("w", 1, 10) == []


async def test_extreme_but_valid_times_and_priorities_round_trip(app: LiteTask) -> None:
    t = jobs.register(app)
    latest = LATEST_RUN_AT - datetime.timedelta(seconds=1)
    earliest = datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)
    ids = [await t["aadd"].configure(eta=latest, priority=2**31 - 1).adelay(1, 1),
           await t["aadd"].configure(eta=earliest, priority=-(2**31)).adelay(1, 1),
           await t["aadd"].configure(countdown=86_400 * 365 * 6000).adelay(1, 1)]
    recs = [await app.get_task(i) for i in ids]
    assert recs[0] is not None and recs[0].run_at == latest and recs[0].priority == 2**31 - 1
    assert recs[1] is not None and recs[1].run_at == earliest and recs[1].priority == -(2**31)
    assert recs[2] is not None and recs[2].run_at is not None and recs[2].run_at.year >= 8000
    assert len(await app.list_tasks()) == 3


@pytest.mark.parametrize(("options", "message"), [
    ({"retries": -1}, "retries must be an int from 0 to 1000"),
    ({"retries": 1001}, "retries must be an int from 0 to 1000"),
    ({"retries": math.nan}, "retries must be an int"),
    ({"retry_backoff": math.nan}, "retry_backoff must be a finite number"),
    ({"retry_backoff": math.inf}, "retry_backoff must be a finite number"),
    ({"retry_backoff": -1.0}, "retry_backoff must be a finite number"),
    ({"timeout": math.nan}, "timeout must be a positive, finite number"),
    ({"timeout": math.inf}, "timeout must be a positive, finite number"),
    ({"timeout": 0}, "timeout must be a positive, finite number"),
    ({"max_concurrency": 0}, "max_concurrency must be an int from 1"),
    ({"max_concurrency": 2**31}, "max_concurrency must be an int from 1"),
    ({"max_concurrency": 1.5}, "max_concurrency must be an int from 1"),
    ({"priority": 2**31}, "priority must be from"),
    ({"name": "a\x00b"}, "task name 'a\\x00b' contains a NUL character"),
    ({"name": "a\udc80b"}, "task name 'a\\udc80b' is not valid Unicode"),
    ({"queue": "a\x00b"}, "queue 'a\\x00b' contains a NUL character"),
    ({"queue": "\ud800"}, "queue '\\ud800' is not valid Unicode"),
])
def test_task_options_that_cannot_be_stored_are_refused(options: dict[str, Any], message: str) -> None:
    app = LiteTask(f"memory://{uuid.uuid4().hex}")
    with pytest.raises(ValueError, match=re.escape(message)):
        app.task(**options)(jobs.aadd)
    assert app.tasks == {}


def test_other_durations_that_cannot_be_stored_are_refused() -> None:
    for ttl in (math.nan, math.inf, -1, datetime.timedelta.max):
        with pytest.raises(ConfigurationError, match="result_ttl must be positive"):
            LiteTask("memory://", result_ttl=ttl)
    app = LiteTask(f"memory://{uuid.uuid4().hex}")
    for every in (math.nan, math.inf, 0):
        with pytest.raises(ConfigurationError, match="every= must be a positive, finite number"):
            app.periodic(every=every)
    for delay in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="Retry delay must be a finite number"):
            Retry("later", delay=delay)


async def test_durations_of_calls_that_cannot_be_used_are_refused(app: LiteTask) -> None:
    for older_than in (math.nan, math.inf, -1, datetime.timedelta.max):
        with pytest.raises(ValueError, match="older_than must be from 0"):
            await app.purge(older_than)
    t = jobs.register(app)
    tid = await t["aadd"].adelay(1, 1)
    with pytest.raises(ValueError, match="timeout must be a number"):
        await app.wait(tid, timeout=math.nan)
    with pytest.raises(ValueError, match="limit must be an int"):
        await app.list_tasks(limit=2.5)  # type: ignore[arg-type]


async def test_retry_delay_beyond_the_latest_due_time_is_capped(app: LiteTask) -> None:
    t = app.task(retries=1)(bad_input_jobs.retry_after)
    async with running_worker(app):
        tid = await t.adelay(1e15)
        for _ in range(400):
            rec = await app.get_task(tid)
            assert rec is not None
            if rec.status is TaskStatus.PENDING and rec.attempts == 1:
                break
            await asyncio.sleep(0.05)
    assert rec.status is TaskStatus.PENDING and rec.run_at is not None
    assert abs((rec.run_at - LATEST_RUN_AT).total_seconds()) < 60  # readable, and as late as allowed
    assert rec.errors and rec.errors[-1]["type"] == "Retry"
    assert [r.id for r in await app.list_tasks()] == [tid]


# --- NUL and lone surrogates in ids, filters, names, queues, unique keys ---


@pytest.mark.parametrize("task_id", ["a\x00b", "\x00", "a\udc80b", "\ud800"])
async def test_ids_no_broker_can_hold_are_not_found(app: LiteTask, task_id: str) -> None:
    t = jobs.register(app)
    assert await app.get_task(task_id) is None
    assert await asyncio.to_thread(app.get_task_sync, task_id) is None
    for call in (app.cancel, app.retry, app.task_logs, app.wait):
        with pytest.raises(TaskNotFound, match="no task with id"):
            await call(task_id)
    with pytest.raises(TaskNotFound, match="'before' cursor"):
        await app.list_tasks(before=task_id)
    await t["aadd"].adelay(1, 1)
    assert await app.list_tasks(name=task_id) == []
    assert await app.list_tasks(queue=task_id) == []
    assert await app.list_tasks(status="pending", name=task_id, queue=task_id) == []
    assert len(await app.list_tasks()) == 1  # the store is intact


@pytest.mark.parametrize("bad", ["a\x00b", "a\udc80b"])
async def test_names_queues_and_unique_keys_no_broker_can_hold_are_refused(app: LiteTask, bad: str) -> None:
    t = jobs.register(app)
    problem = "NUL" if "\x00" in bad else "not valid Unicode"
    with pytest.raises(ValueError, match=f"queue .* {problem}"):
        t["aadd"].configure(queue=bad)
    with pytest.raises(ValueError, match=f"unique_key .* {problem}"):
        t["aadd"].configure(unique_key=bad)
    with pytest.raises(ValueError, match=f"task name .* {problem}"):
        await app.aenqueue(bad, 1)
    with pytest.raises(ValueError, match=f"task name .* {problem}"):
        await asyncio.to_thread(app.enqueue, bad, 1)
    with pytest.raises(ValueError, match=f"queue .* {problem}"):
        app.task(queue=bad)(jobs.aadd)
    b = await app.broker()
    assert await b.claim("w", 1, 10) == []


# --- lone surrogates and deep nesting in payloads ---


@pytest.mark.parametrize("bad", [
    "\ud800",
    "\udc80",
    os.fsdecode(b"report-\xe9.txt"),
    {"k\udc80": 1},
    ["fine", {"nested": ["\udfff"]}],
    "\ud83d\ude00",  # a surrogate pair spelled as two code points: not one character
])
async def test_lone_surrogates_in_arguments_write_nothing(app: LiteTask, bad: object) -> None:
    t = jobs.register(app)
    with pytest.raises(SerializationError, match=r"tests\.jobs\.aadd.*not valid Unicode.*surrogate"):
        await t["aadd"].adelay(bad, "x")
    with pytest.raises(SerializationError, match="not valid Unicode"):
        await t["aadd"].adelay(a="x", b=bad)
    with pytest.raises(SerializationError, match="not valid Unicode"):
        await asyncio.to_thread(t["add"].delay, bad, "x")
    b = await app.broker()
    assert await b.claim("w", 1, 10) == []


async def test_text_beyond_the_bmp_round_trips(app: LiteTask) -> None:
    t = jobs.register(app)
    text = "emoji \U0001f600, escapes \\ud800 \\u0000, accents é"
    async with running_worker(app):
        rec = await app.wait(await t["aadd"].adelay(text, "\U0001f4a9"), 20)
    assert rec.status is TaskStatus.COMPLETED and rec.result == text + "\U0001f4a9"
    assert rec.args == [text, "\U0001f4a9"]


def _nested(depth: int) -> list[Any]:
    return bad_input_jobs._nested(depth)


async def test_arguments_nested_too_deeply_write_nothing(app: LiteTask) -> None:
    t = jobs.register(app)
    deep = _nested(100_000)
    with pytest.raises(SerializationError, match=r"arguments of task 'tests\.jobs\.aadd'.*nested too deeply"):
        await t["aadd"].adelay(deep, 1)
    with pytest.raises(SerializationError, match="nested too deeply"):
        await t["aadd"].adelay(1, b={"k": deep})
    assert isinstance(await t["aadd"].adelay(_nested(50), 1), str)  # moderate nesting is fine
    b = await app.broker()
    assert [c.args_json.count("[") for c in await b.claim("w", 1, 10)] == [51]  # with the args list


def test_nesting_dumps_accepts_is_read_back_from_a_deeper_stack() -> None:
    """json decodes by recursion: a reader deeper in its stack than the writer was still reads
    what dumps accepted (serialization.loads retries on a fresh thread)."""
    from litetask_async.serialization import dumps, loads

    text = dumps(_nested(900), "a value")

    def read_at_depth(n: int) -> Any:
        return loads(text) if n == 0 else read_at_depth(n - 1)

    value = read_at_depth(300)
    assert dumps(value, "a value") == text
    with pytest.raises(RecursionError):
        loads("[" * 100_000 + "]" * 100_000)


async def test_nested_payloads_within_the_limit_round_trip(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        recs = [await app.wait(await t[name].adelay(_nested(300), [1]), 30) for name in ("aadd", "add")]
    for rec in recs:
        assert rec.status is TaskStatus.COMPLETED, rec.error
        assert rec.result == [*_nested(300), 1] and rec.args == [_nested(300), [1]]


async def test_results_that_cannot_be_stored_fail_with_serialization_error(app: LiteTask) -> None:
    tasks = {f.__name__: app.task(f) for f in (
        bad_input_jobs.non_utf8_name_async, bad_input_jobs.non_utf8_name_pool,
        bad_input_jobs.deep_result_async, bad_input_jobs.deep_result_pool)}
    t = jobs.register(app)
    async with running_worker(app):
        ids = {
            "surrogate_async": await tasks["non_utf8_name_async"].adelay(),
            "surrogate_pool": await tasks["non_utf8_name_pool"].adelay(),
            "deep_async": await tasks["deep_result_async"].adelay(100_000),
            "deep_pool": await tasks["deep_result_pool"].adelay(100_000),
        }
        recs = {k: await app.wait(v, 30) for k, v in ids.items()}
        good = await app.wait(await t["add"].adelay(2, 3), 30)
    for kind, rec in recs.items():
        assert rec.status is TaskStatus.FAILED, kind
        assert rec.error is not None and rec.error["type"] == "SerializationError", (kind, rec.error)
        assert "the result of task" in rec.error["message"], kind
        problem = "surrogate \\udce9" if kind.startswith("surrogate") else "nested too deeply"
        assert problem in rec.error["message"], (kind, rec.error["message"])
        assert rec.attempts == 1  # not retried: the same value would fail again
    assert good.status is TaskStatus.COMPLETED and good.result == 5
    assert len(await app.list_tasks()) == 5


async def test_stored_payload_nested_too_deeply_stays_readable(app: LiteTask) -> None:
    """A payload json cannot decode here (written by other code, or by a process with a deeper
    limit) does not break reads: the record shows the raw text, and a worker fails the task."""
    t = jobs.register(app)
    deep = "[" * 5_000 + "]" * 5_000
    b = await app.broker()
    [tid] = await b.enqueue([NewTask(id=uuid.uuid4().hex, name=t["aadd"].name,
                                     args_json=f"[{deep},1]", kwargs_json="{}")])
    rec = await app.get_task(tid)
    assert rec is not None and isinstance(rec.args, str) and rec.args.count("[") == 5_001
    assert [r.id for r in await app.list_tasks()] == [tid]
    async with running_worker(app):
        rec = await app.wait(tid, 30)
    assert rec.status is TaskStatus.FAILED and rec.error is not None
    assert rec.error["type"] == "PayloadError" and "nested too deeply" in rec.error["message"]


async def test_async_task_exiting_fails_that_attempt_only(app: LiteTask) -> None:
    """sys.exit(), KeyboardInterrupt or GeneratorExit in an async task's body end its attempt, as
    in a pool process; the worker and the tasks beside it go on."""
    t = jobs.register(app)
    async with running_worker(app, concurrency=6) as w:
        ids = [await t["exit_async"].adelay(5), await t["exit_async_timeout"].adelay(6),
               await t["raise_base_async"].adelay("KeyboardInterrupt"),
               await t["raise_base_async"].adelay("GeneratorExit")]
        slow = [await t["sleep_async"].adelay(0.5) for _ in range(2)]
        recs = [await app.wait(i, 20) for i in ids]
        later = await app.wait(await t["aadd"].adelay(1, 2), 20)
        slow_recs = [await app.wait(i, 20) for i in slow]
        assert not w._stopping.is_set()
    assert [(r.status, r.error and r.error["type"], r.error and r.error["message"]) for r in recs] == [
        (TaskStatus.FAILED, "SystemExit", "5"), (TaskStatus.FAILED, "SystemExit", "6"),
        (TaskStatus.FAILED, "KeyboardInterrupt", ""), (TaskStatus.FAILED, "GeneratorExit", "")]
    assert all(r.status is TaskStatus.COMPLETED for r in slow_recs)
    assert later.status is TaskStatus.COMPLETED and later.result == 3


async def test_exception_whose_str_raises_keeps_its_type_and_traceback(app: LiteTask) -> None:
    t = jobs.register(app)
    async with running_worker(app):
        recs = [await app.wait(await t[n].adelay(), 20) for n in ("bad_str_pool", "bad_str_async")]
    for rec, fn in zip(recs, ("bad_str_pool", "bad_str_async"), strict=True):
        assert rec.status is TaskStatus.FAILED and rec.error is not None
        assert rec.error["type"] == "BadStrError", rec.error
        assert "str() failed" in rec.error["message"]
        assert f"in {fn}" in rec.error["traceback"] and "BadStrError" in rec.error["traceback"]
