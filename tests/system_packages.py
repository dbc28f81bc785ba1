"""Debian packages the tests need (pgbouncer, faketime, iproute2, chromium), installed by the
test suite itself, as the embedded PostgreSQL is: on a Debian machine where we are root, a
missing command is installed with apt-get; elsewhere the caller says what is missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.cache
def ensure_command(command: str, package: str | None = None) -> str | None:
    """The path of ``command``, installing Debian's ``package`` (default: the command's name)
    when it is missing and we can; None when it is still missing."""
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin")
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package or command]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        # the package lists may be missing or stale on a fresh machine
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            return None
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin:/usr/bin")
