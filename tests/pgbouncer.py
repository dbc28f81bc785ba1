"""A throwaway PgBouncer (Debian's ``pgbouncer``) in front of the test PostgreSQL.

Started on a free port of 127.0.0.1, trust authentication, in transaction pooling mode with a
small server pool, so that consecutive statements of one client land on different server
connections (which is what breaks prepared statements and LISTEN behind a real deployment's
pooler). PgBouncer refuses to run as root: as root it runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from tests.system_packages import ensure_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """``start()`` / ``stop()``; ``url(dbname)`` is a URL through the pooler."""

    def __init__(self, backend_url: str, *, pool_mode: str = "transaction", pool_size: int = 2) -> None:
        u = urllib.parse.urlsplit(backend_url)
        self.backend_host = u.hostname or "127.0.0.1"
        self.backend_port = u.port or 5432
        self.user = urllib.parse.unquote(u.username or "postgres")
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.port = _free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, dbname: str, query: str = "") -> str:
        q = f"?{query}" if query else ""
        return f"postgresql://{urllib.parse.quote(self.user)}@127.0.0.1:{self.port}/{urllib.parse.quote(dbname)}{q}"

    def start(self) -> None:
        exe = ensure_command("pgbouncer")
        if exe is None:
            raise RuntimeError("Debian's pgbouncer is not installed and could not be installed here: "
                               "apt-get install -y pgbouncer")
        self.dir = Path(tempfile.mkdtemp(prefix="litetask-pgbouncer-"))
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={self.backend_host} port={self.backend_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir / 'users.txt'}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.dir / 'pgbouncer.log'}
""")
        kw: dict[str, object] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            for f in self.dir.iterdir():
                os.chown(f, nobody.pw_uid, nobody.pw_gid)
            kw = {"user": nobody.pw_uid, "group": nobody.pw_gid}
        self.proc = subprocess.Popen([exe, str(self.dir / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within 15 s:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "pgbouncer.log" if self.dir else None
        return path.read_text(errors="replace")[-4000:] if path and path.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
