"""Simulated hosts for the multi-host tests: one machine, several "hosts" made of Linux namespaces.

Each host is a network namespace of its own (``ip netns add <tag>-hNN``) joined to the root
namespace by a veth pair whose root end is a port of one bridge; the bridge has the address
PostgreSQL listens on (``Network.gateway``, 10.213.X.1/24), the host's end is ``eth0`` with
10.213.X.N. A host's worker also gets a UTS namespace (its own hostname) and a PID namespace
(it is PID 1 there, so two hosts' workers have the same pid, as on two machines)::

    ip netns exec NS unshare --uts --pid --fork --mount-proc --kill-child \\
        sh -c 'hostname hostN && exec python -m litetask_async.cli worker ...'

The file system is shared, so tasks can record side effects in a file.

What a test can do to a host: :func:`cut` / :func:`heal` its link (the root end of its veth goes
down: its packets are dropped silently, TCP connections stay open and retransmit, as in a real
partition), :func:`kill` its worker with any signal, :func:`start_worker` (optionally under
libfaketime, its clock shifted) and :func:`stop_worker`.

Signals: the worker is PID 1 of its PID namespace, so a signal sent from outside reaches it only
if it has a handler for it (SIGKILL always does). The worker handles SIGTERM/SIGINT once its
event loop runs; a SIGTERM sent while it still imports is ignored.

Clean-up: every namespace, veth and bridge is named after the run (``lt<pid in hex>x<2 random hex>``),
removed by :meth:`Network.close` (fixtures call it in ``finally``), at interpreter exit, and, for
what a killed run left behind (its pid is gone), when the next :class:`Network` is made.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import ipaddress
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.pg_server import _pid_alive as pid_alive
from tests.system_packages import ensure_command

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_APP = "tests.multihost.app:app"
#: The worker options every host's worker gets (``extra_args`` come after and win).
WORKER_ARGS = ("--concurrency", "10", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "3",
               "--grace-period", "5")

# lt<owner pid, hex>x<2 random hex digits>: 11 characters at most, so that the veths' names
# (tag + "h" + 2 hex digits) stay within the kernel's 15.
_TAG = re.compile(r"lt([0-9a-f]{1,7})x[0-9a-f]{2}")
_SUBNET = "10.213"


class HostsUnavailable(RuntimeError):
    """Simulated hosts cannot be made here (not root, no ``ip``/``unshare``, a refused namespace)."""


def _new_tag() -> str:
    return f"lt{os.getpid():x}x{random.randrange(256):02x}"


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise HostsUnavailable(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


@functools.cache
def unavailable_reason() -> str | None:
    """Why simulated hosts cannot be made on this machine, or None when they can.

    Installs iproute2 (``ip``) with apt-get when it is missing and we are root on Debian, then
    makes and removes a probe namespace with a PID/UTS namespace inside, as the workers will.
    """
    if sys.platform != "linux":
        return "simulated hosts need Linux namespaces"
    if os.geteuid() != 0:
        return "simulated hosts need root (network, UTS and PID namespaces, veth pairs, a bridge)"
    if ensure_command("ip", "iproute2") is None:
        return "`ip` (Debian's iproute2) is missing and could not be installed with apt-get"
    if ensure_command("unshare", "util-linux") is None:
        return "`unshare` (util-linux) is missing and could not be installed with apt-get"
    tag = _new_tag()
    probe = f"{tag}-probe"
    try:
        _run("ip", "netns", "add", probe)
        res = _run("ip", "netns", "exec", probe, "unshare", "--uts", "--pid", "--fork", "--mount-proc",
                   "sh", "-c", "hostname probe && echo $$", check=False)
        if res.returncode != 0 or res.stdout.strip() != "1":
            return f"unshare --uts --pid --mount-proc refused in a network namespace: {res.stderr.strip()}"
        _run("ip", "link", "add", f"{tag}pb", "type", "bridge")
        _run("ip", "link", "del", f"{tag}pb")
    except HostsUnavailable as exc:
        return str(exc)
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@functools.cache
def faketime_library() -> str | None:
    """libfaketime's preload library (Debian's faketime package, installed when missing), or None."""
    if ensure_command("faketime") is None:
        return None
    for name in ("libfaketimeMT.so.1", "libfaketime.so.1"):  # MT: the worker has threads
        found = sorted(glob.glob(f"/usr/lib/*/faketime/{name}") + glob.glob(f"/usr/lib/faketime/{name}"))
        if found:
            return found[0]
    return None


def reap_leftovers() -> list[str]:
    """Remove the namespaces, veths and bridges of runs whose process is gone (killed runs).

    Returns what was removed. Objects of a live run (another test session) are left alone.
    """
    removed: list[str] = []
    names = [line.split(" ")[0] for line in _run("ip", "netns", "list", check=False).stdout.splitlines()]
    for name in names:
        m = _TAG.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            _delete_netns(name)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        m = _TAG.match(name)
        if m and not pid_alive(int(m.group(1), 16)):
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


def _delete_netns(name: str) -> None:
    """Kill whatever still runs in the namespace (it would keep it alive), then delete it."""
    pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run("ip", "netns", "del", name, check=False)


_networks: set[Network] = set()


@atexit.register
def _close_all() -> None:
    for net in list(_networks):
        if net.owner == os.getpid():
            with contextlib.suppress(Exception):
                net.close()


class Network:
    """A bridge in the root namespace (address :attr:`gateway`) that hosts are plugged into.

    Use it as a context manager, or call :meth:`close` in a ``finally``.
    """

    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise HostsUnavailable(reason)
        reap_leftovers()
        self.owner = os.getpid()
        self.tag = _new_tag()
        self.bridge = f"{self.tag}br"
        self.subnet = self._free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.cidr = f"{self.subnet}.0/24"
        self.hosts: list[Host] = []
        self._made = 0
        _networks.add(self)
        try:
            # a MAC of its own: a bridge otherwise takes its ports' lowest one, and changes it
            # (under the hosts' ARP caches) when that port goes down or up
            mac = "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))
            _run("ip", "link", "add", self.bridge, "address", mac, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> str:
        """A 10.213.X.0/24 that no interface of this machine is in."""
        used = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
        nets = [ipaddress.ip_interface(w).network for w in re.findall(r"inet (\S+)", used)]
        for x in random.sample(range(1, 255), 254):
            candidate = ipaddress.ip_network(f"{_SUBNET}.{x}.0/24")
            if not any(candidate.overlaps(n) for n in nets):
                return f"{_SUBNET}.{x}"
        raise HostsUnavailable(f"no free /24 in {_SUBNET}.0.0/16")

    def add_host(self, name: str, *, env: Mapping[str, str] | None = None,
                 log_dir: Path | None = None) -> Host:
        """A new host: its namespace, its veth on the bridge, ``lo`` and ``eth0`` up.

        name: its hostname (what its worker's ``socket.gethostname()`` says).
        env: variables its workers get (e.g. LITETASK_URL), under ``start_worker``'s ``env``.
        log_dir: where its workers' logs go (``<log_dir>/<name>.log``; default: a temp dir).
        """
        self._made += 1
        if self._made > 200:
            raise HostsUnavailable("more than 200 hosts on one network")
        n = self._made
        host = Host(network=self, name=name, netns=f"{self.tag}-h{n:02x}", veth=f"{self.tag}h{n:02x}",
                    address=f"{self.subnet}.{n + 1}", env=dict(env or {}),
                    log_path=(log_dir or Path("/tmp")) / f"{name}.log")
        peer = f"{self.tag}p{n:02x}"
        self.hosts.append(host)
        try:
            _run("ip", "netns", "add", host.netns)
            _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", host.netns)
            _run("ip", "link", "set", host.veth, "master", self.bridge)
            _run("ip", "link", "set", host.veth, "up")
            _run("ip", "-n", host.netns, "link", "set", peer, "name", "eth0")
            _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
            _run("ip", "-n", host.netns, "link", "set", "lo", "up")
        except BaseException:
            self.remove_host(host)
            raise
        return host

    def remove_host(self, host: Host) -> None:
        """Kill the host's worker and everything else in its namespace; delete namespace and veth."""
        if host.worker is not None:
            host.worker.kill(signal.SIGKILL)
        _delete_netns(host.netns)
        _run("ip", "link", "del", host.veth, check=False)  # gone with the namespace, normally
        if host in self.hosts:
            self.hosts.remove(host)

    def close(self) -> None:
        """Remove every host, then the bridge."""
        if self.owner != os.getpid():
            return
        for host in list(self.hosts):
            self.remove_host(host)
        _run("ip", "link", "del", self.bridge, check=False)
        _networks.discard(self)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(eq=False)
class Host:
    """One simulated host (made by :meth:`Network.add_host`)."""

    network: Network
    name: str
    netns: str
    veth: str  # the root end of its link, a port of the bridge
    address: str
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path = Path("/tmp/host.log")
    worker: WorkerProcess | None = None

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the host's network namespace (not in a worker's PID namespace)."""
        return _run("ip", "netns", "exec", self.netns, *cmd, check=False, timeout=timeout)


class WorkerProcess:
    """A worker running on a host: ``popen`` is the ``unshare`` process outside, ``pid`` the
    worker itself as seen from the root namespace, ``ns_pid`` as seen inside its own (1)."""

    def __init__(self, host: Host, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.host = host
        self.popen = popen
        self.log_path = log_path
        self.pid = self._find_child()
        self.ns_pid = self._ns_pid()

    def _find_child(self) -> int:
        deadline = time.monotonic() + 10
        path = f"/proc/{self.popen.pid}/task/{self.popen.pid}/children"
        while time.monotonic() < deadline:
            try:
                kids = Path(path).read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            if self.popen.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"the worker of {self.host.name} did not start: {self.log_tail()}")

    def _ns_pid(self) -> int:
        # NSpid: the pid in each nested PID namespace, outermost first
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        raise RuntimeError("no NSpid line: this kernel does not show PID namespaces")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int) -> None:
        """Send ``sig`` to the worker (its unshare parent forwards nothing)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self.wait(10)

    def wait(self, timeout: float) -> int:
        """The exit status of the worker, as unshare passes it on: its exit code, -N when signal
        N killed it, but 1 for SIGKILL (unshare cannot kill itself with SIGKILL to pass it on)."""
        return self.popen.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return f"--- {self.log_path} (last {chars} chars) ---\n" + self.log_text()[-chars:]


def start_worker(host: Host, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 faketime: str | None = None, app: str = DEFAULT_APP) -> WorkerProcess:
    """Start ``python -m litetask_async.cli worker APP`` on ``host`` (in its network namespace,
    in new UTS and PID namespaces, with the host's name as hostname).

    extra_args: worker options after :data:`WORKER_ARGS` (a repeated option: the last one wins).
    env: variables over the host's ``env`` (the test process's environment below both).
    faketime: a libfaketime offset such as ``"+5m"`` or ``"-5m"``: the worker and its pool
        processes see the real-time clock shifted by it (the monotonic clock is left alone).
    Output goes to ``host.log_path`` (appended to, so a restarted worker's log follows).
    """
    if host.worker is not None and host.worker.alive():
        raise RuntimeError(f"{host.name} already runs a worker")
    full_env = {**os.environ, **host.env, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
    inner: list[str] = []
    if faketime is not None:
        lib = faketime_library()
        if lib is None:
            raise HostsUnavailable("libfaketime (Debian's faketime) is missing and could not be installed")
        # through env(1), which execs: the worker stays PID 1, and only it (and its pool
        # processes, which inherit the environment) see the shifted clock
        inner = ["env", f"LD_PRELOAD={lib}", f"FAKETIME={faketime}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
    inner += [sys.executable, "-m", "litetask_async.cli", "worker", app, *WORKER_ARGS, *extra_args]
    cmd = ["ip", "netns", "exec", host.netns,
           "unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL",
           "sh", "-c", 'hostname "$0" && exec "$@"', host.name, *inner]
    with host.log_path.open("ab") as out:
        popen = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        host.worker = WorkerProcess(host, popen, host.log_path)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    return host.worker


def kill(host: Host, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the host's worker, from outside its PID namespace (SIGKILL: waits for it)."""
    if host.worker is None:
        raise RuntimeError(f"{host.name} runs no worker")
    host.worker.kill(sig)


def stop_worker(host: Host, timeout: float = 30) -> int:
    """SIGTERM the host's worker and wait for it; its exit status (0: a clean stop)."""
    w = host.worker
    if w is None:
        raise RuntimeError(f"{host.name} runs no worker")
    w.kill(signal.SIGTERM)
    try:
        return w.wait(timeout)
    except subprocess.TimeoutExpired:
        w.kill(signal.SIGKILL)
        raise AssertionError(f"the worker of {host.name} did not stop within {timeout}s of SIGTERM\n"
                             + w.log_tail()) from None


def cut(host: Host) -> None:
    """Take the host's link down: from now on its packets are dropped (no reset, no error)."""
    _run("ip", "link", "set", "dev", host.veth, "down")


def heal(host: Host) -> None:
    """Bring the host's link back up."""
    _run("ip", "link", "set", "dev", host.veth, "up")


def diagnose(host: Host) -> str:
    """The host's link, addresses and neighbours, and the bridge's ports: for failure messages."""
    net = host.network
    parts = [host.run("ip", "addr").stdout, host.run("ip", "neigh").stdout,
             _run("ip", "-d", "link", "show", host.veth, check=False).stdout,
             _run("bridge", "link", "show", check=False).stdout,
             _run("ip", "addr", "show", net.bridge, check=False).stdout]
    return "\n".join(parts)


def reachable(host: Host, address: str, port: int, timeout: float = 1.0, attempt: float = 1.0) -> bool:
    """Whether a TCP connection from inside ``host`` to ``address:port`` succeeds within
    ``timeout``: new connections of ``attempt`` seconds each, one after the other (right after a
    heal the first SYN can be lost; a connection retransmits it only after a second)."""
    script = (f"until timeout {attempt} bash -c 'exec 3<>/dev/tcp/{address}/{port}' 2>/dev/null; "
              "do sleep 0.05; done")
    res = host.run("timeout", str(timeout), "bash", "-c", script, timeout=timeout + 10)
    return res.returncode == 0
