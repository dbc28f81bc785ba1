"""The simulated hosts themselves: isolated names and pids, a link that cut() really cuts, and
nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.multihost import hosts
from tests.multihost.cluster import Cluster
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.multihost


def _names() -> tuple[set[str], str]:
    netns = {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.splitlines() if line}
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return netns, links


def test_hosts_are_isolated_and_cut_drops_traffic(cluster: Cluster, mh_server: PostgresServer) -> None:
    a, b = cluster.add_hosts(2)
    gateway, port = cluster.network.gateway, mh_server.port
    for h in (a, b):
        lo = h.run("ip", "-o", "link", "show", "lo").stdout
        assert "UP" in lo.split(">")[0], f"lo is down in {h.name}: {lo}"
        assert hosts.reachable(h, gateway, port), f"{h.name} cannot reach PostgreSQL at {gateway}:{port}"
        # its own loopback works (nothing listens there: refused, not unreachable)
        refused = h.run("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9").stderr
        assert "Connection refused" in refused, f"loopback of {h.name}: {refused}"

    # a worker-like process: PID 1 in its namespace, with the host's name; signals from outside
    wa = hosts.start_worker(a, app="tests.multihost.app:app", extra_args=("--concurrency", "1"))
    wb = hosts.start_worker(b, app="tests.multihost.app:app", extra_args=("--concurrency", "1"))
    ids = cluster.wait_registered([a, b])
    assert wa.ns_pid == wb.ns_pid == 1 and wa.pid != wb.pid, (wa.ns_pid, wb.ns_pid, wa.pid, wb.pid)
    assert ids["host1"].startswith("host1:1:") and ids["host2"].startswith("host2:1:"), ids

    hosts.cut(a)
    try:
        assert not hosts.reachable(a, gateway, port), "cut() left host1's link working"
        assert hosts.reachable(b, gateway, port), "cut(host1) cut host2 too"
    finally:
        hosts.heal(a)
    assert hosts.reachable(a, gateway, port, 5), "heal() did not bring host1's link back"

    hosts.kill(a, signal.SIGTERM)  # PID 1 of its namespace, with a SIGTERM handler: a clean stop
    assert wa.wait(30) == 0, wa.log_tail()
    hosts.kill(b, signal.SIGKILL)
    assert wb.wait(10) != 0 and not os.path.exists(f"/proc/{wb.pid}"), "SIGKILL did not end host2's worker"

    netns_before, _ = _names()
    assert a.netns in netns_before and b.netns in netns_before
    for h in (a, b):
        cluster.network.remove_host(h)
    cluster.hosts.clear()
    netns_after, links_after = _names()
    assert a.netns not in netns_after and b.netns not in netns_after
    assert a.veth not in links_after and b.veth not in links_after


def test_leftovers_of_a_dead_run_are_reaped(mh_network: hosts.Network) -> None:
    """A namespace and a link named after a process that is gone are removed by the next run."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"lt{dead.pid:x}x00"
    subprocess.run(["ip", "netns", "add", f"{tag}-h01"], check=True)
    subprocess.run(["ip", "link", "add", f"{tag}br", "type", "bridge"], check=True)
    removed = hosts.reap_leftovers()
    assert f"{tag}-h01" in removed and f"{tag}br" in removed, removed
    netns, links = _names()
    assert f"{tag}-h01" not in netns and f"{tag}br" not in links
    assert mh_network.bridge in links, "the live run's bridge must be left alone"
