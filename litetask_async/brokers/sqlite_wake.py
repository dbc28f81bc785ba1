"""Cross-process wake-ups for SQLite: idle workers sleep until a writer pokes them.

SQLite cannot notify other processes. Each idle worker binds a Unix datagram socket in a
directory beside the database file (``<db>-litetask-wake/``); after a commit that makes work
due (an enqueue, a retry, a task put back), the writer thread of any process sends one byte to
every socket there. A socket whose worker died (SIGKILL leaves its file) refuses the byte and
is removed by the sender. A lost or refused poke costs only latency: workers still poll
``PRAGMA data_version``, at a slower pace than they would without the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

log = logging.getLogger("litetask_async.sqlite")

_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its terminating NUL
# How often a sender looks for workers that started or stopped listening (one stat).
RECHECK_S = 0.1


def wake_dir(db_path: str) -> str:
    """The directory holding the wake-up sockets of the workers of ``db_path``."""
    return f"{db_path}-litetask-wake"


class WakeListener:
    """The socket one worker process sleeps on; ``on_wake`` runs on its event loop."""

    def __init__(self, db_path: str) -> None:
        self.directory = wake_dir(db_path)
        self.path: str | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop, on_wake: Callable[[], None]) -> bool:
        """Bind and start listening; False (and polling alone) where that is not possible."""
        if not hasattr(socket, "AF_UNIX"):
            return False
        path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}.sock")
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            log.info("database path too long for a wake-up socket; workers poll instead")
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            os.makedirs(self.directory, exist_ok=True)
            sock.bind(path)
        except OSError as exc:
            sock.close()
            log.info("no wake-up socket in %s (%s); workers poll instead", self.directory, exc)
            return False
        sock.setblocking(False)
        self._sock, self.path, self._loop = sock, path, loop

        def readable() -> None:
            with contextlib.suppress(OSError):
                while sock.recv(64):
                    pass
            on_wake()

        loop.add_reader(sock.fileno(), readable)
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class WakeSender:
    """Pokes every worker listening on a database; used by the writer thread after a commit."""

    def __init__(self, db_path: str) -> None:
        self.directory = wake_dir(db_path)
        self._sock: socket.socket | None = None
        self._targets: list[str] = []
        self._seen_mtime: int | None = None
        self._checked = -RECHECK_S

    def poke(self) -> None:
        """Send one byte to each listening worker; never blocks, never raises."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:  # a worker started or stopped since? (a stat)
            self._checked = now
            try:
                mtime: int | None = os.stat(self.directory).st_mtime_ns
            except OSError:
                mtime = None  # no worker has ever listened here
            if mtime is None:
                self._targets, self._seen_mtime = [], None
            elif mtime != self._seen_mtime:
                self._seen_mtime = mtime
                try:
                    self._targets = [e.path for e in os.scandir(self.directory) if e.name.endswith(".sock")]
                except OSError:
                    self._targets = []
        if not self._targets:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        for target in self._targets:
            try:
                self._sock.sendto(b"!", target)
            except BlockingIOError:
                pass  # its queue is full: it has wake-ups waiting already
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    # Left by a worker that died without closing it.
                    with contextlib.suppress(OSError):
                        os.unlink(target)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
