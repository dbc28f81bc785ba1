"""Two hosts whose workers have the same pid (PID 1 of their namespaces) keep distinct identities:
a cancel reaches the right one, a SIGKILLed worker's tasks are taken up by the other, whose own
tasks are not touched."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.multihost import app as mh
from tests.multihost import hosts
from tests.multihost.cluster import Cluster, check_results_match_final_attempt, decode, report

pytestmark = pytest.mark.multihost


def test_same_pid_on_two_hosts(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.add_hosts(2)
    release = tmp_path / "release"
    hold = cluster.bind(mh.hold)

    def running_on(worker_id: str) -> dict[str, int]:
        rows = cluster.fetch("SELECT id, attempts FROM litetask_tasks WHERE status = 'running' AND worker_id = $1",
                             worker_id)
        return {r["id"]: r["attempts"] for r in rows}

    # host1's worker alone first, full with three tasks; then host2's, which gets the next two
    wa = cluster.start(a, "--concurrency", "3")
    ida = cluster.wait_registered([a])[a.name]
    a_tasks = [hold.delay(n, str(release), 60.0) for n in range(3)]
    cluster.wait_until(lambda: set(running_on(ida)) == set(a_tasks), 30, "host1 to run its three tasks")
    wb = cluster.start(b)
    idb = cluster.wait_registered([b])[b.name]
    b_tasks = [hold.delay(n, str(release), 60.0) for n in (10, 11)]
    cluster.wait_until(lambda: set(running_on(idb)) == set(b_tasks), 30, "host2 to run its two tasks")

    # the same pid, two identities
    assert wa.ns_pid == wb.ns_pid == 1 and wa.pid != wb.pid, (wa.ns_pid, wb.ns_pid, wa.pid, wb.pid)
    workers = {w.hostname: w for w in cluster.app.workers_sync()}
    assert set(workers) == {a.name, b.name}, workers
    assert workers[a.name].pid == workers[b.name].pid == 1, workers
    assert workers[a.name].id == ida != idb == workers[b.name].id, workers
    assert ida.startswith(f"{a.name}:1:") and idb.startswith(f"{b.name}:1:"), (ida, idb)
    for h, wid in ((a, ida), (b, idb)):
        assert h.worker is not None
        assert f"worker {wid} started" in h.worker.log_text(), h.worker.log_tail()
    for r in cluster.records():
        assert r["pid"] == 1 and r["worker_id"] == (ida if r["id"] in a_tasks else idb), dict(r)
    starts = {(e.n, e.host, e.pid) for e in cluster.effects() if e.event == "start"}
    assert starts == {(0, a.name, 1), (1, a.name, 1), (2, a.name, 1), (10, b.name, 1), (11, b.name, 1)}, starts

    # cancel one of host1's tasks: it stops there, nothing changes on host2
    assert cluster.app.cancel_sync(a_tasks[0])
    cluster.wait_until(lambda: cluster.fetchval("SELECT status FROM litetask_tasks WHERE id = $1",
                                                a_tasks[0]) == "cancelled", 15, "the cancel to stop the task")
    stopped = [(e.n, e.host, e.attempt) for e in cluster.effects() if e.event == "stopped"]
    assert stopped == [(0, a.name, 1)], f"stopped attempts: {stopped}"
    assert running_on(idb) == dict.fromkeys(b_tasks, 1), running_on(idb)
    assert running_on(ida) == dict.fromkeys(a_tasks[1:], 1), running_on(ida)
    assert f"cancelling running task {a_tasks[0]}" in wa.log_text(), wa.log_tail()
    assert a_tasks[0] not in wb.log_text(), wb.log_tail()

    # SIGKILL host1's worker: host2 takes up its two tasks (attempt 2), its own two go on
    hosts.kill(a, signal.SIGKILL)
    assert not wa.alive()
    cluster.wait_until(lambda: running_on(idb) == {**dict.fromkeys(b_tasks, 1), **dict.fromkeys(a_tasks[1:], 2)},
                       20, "host2 to take up host1's tasks", detail=lambda: f"host2 runs {running_on(idb)}")
    taken = re.findall(r"took up \d+ task\(s\) of workers that stopped heartbeating: (.*)", wb.log_text())
    assert {t for line in taken for t in line.split(", ")} == set(a_tasks[1:]), taken
    stopped = [(e.n, e.host, e.attempt) for e in cluster.effects() if e.event == "stopped"]
    assert stopped == [(0, a.name, 1)], f"host2's own tasks were interrupted: {stopped}"

    release.touch()
    cluster.wait_final(5, 30)
    assert cluster.stop_all() == {b.name: 0}
    records = {r["id"]: r for r in cluster.records()}
    assert records[a_tasks[0]]["status"] == "cancelled"
    for tid in a_tasks[1:]:
        r = records[tid]
        assert (r["status"], r["attempts"], r["worker_id"], r["rescues"]) == ("completed", 2, idb, 1), dict(r)
    for tid in b_tasks:
        r = records[tid]
        assert (r["status"], r["attempts"], r["worker_id"], r["rescues"]) == ("completed", 1, idb, 0), dict(r)
    assert not (bad := check_results_match_final_attempt(list(records.values()))), bad
    runs = sorted((e.event, e.n, e.attempt, e.host) for e in cluster.effects())
    expected = sorted([("start", n, 1, a.name) for n in range(3)] + [("stopped", 0, 1, a.name)]
                      + [(ev, n, 2, b.name) for n in (1, 2) for ev in ("start", "end")]
                      + [(ev, n, 1, b.name) for n in (10, 11) for ev in ("start", "end")])
    assert runs == expected, f"runs {runs}"
    lost = decode(records[a_tasks[1]]["errors"])
    assert [e["type"] for e in lost] == ["WorkerLost"], lost
    report("pid reuse", [f"host1 {ida} and host2 {idb}, both pid 1 (host pids {wa.pid}, {wb.pid})",
                         "cancel stopped host1's task only", "host2 took up host1's 2 tasks after its SIGKILL"])
