"""Three hosts, one worker each, 20,000 tasks with a side effect per attempt: every task ends in
exactly one final state, none is lost, and without cuts or kills none runs twice."""

from __future__ import annotations

import random
import time

import pytest

from tests.multihost import app as mh
from tests.multihost.cluster import (
    Calls,
    Cluster,
    check_results_match_final_attempt,
    exactly_once_rows,
    host_of,
    report,
)

pytestmark = pytest.mark.multihost

N = 20_000


def test_three_hosts_run_20000_tasks_once(cluster: Cluster) -> None:
    hosts_ = cluster.add_hosts(3)
    for h in hosts_:
        cluster.start(h)
    ids = cluster.wait_registered(hosts_)
    work = cluster.bind(mh.work)
    rnd = random.Random(11)
    # mostly no-ops; one in ten sleeps a few milliseconds
    calls: Calls = [((n, rnd.uniform(0.002, 0.008) if n % 10 == 0 else 0.0), {}) for n in range(N)]
    t0 = time.monotonic()
    for k in range(0, N, 1000):
        work.delay_many(calls[k:k + 1000])
    cluster.wait_final(N, 150)
    elapsed = time.monotonic() - t0
    codes = cluster.stop_all()
    assert set(codes.values()) == {0}, f"exit statuses {codes}\n{cluster.logs()}"

    records = cluster.records()
    by_status: dict[str, int] = {}
    for r in records:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    assert len(records) == N and by_status == {"completed": N}, f"{len(records)} tasks: {by_status}"
    assert not (bad := exactly_once_rows(cluster)), f"tasks not in exactly one final row: {bad[:20]}"
    assert not (bad := check_results_match_final_attempt(records)), f"stale results: {bad[:20]}"

    ends = cluster.ends_by_task()
    missing = sorted(set(range(N)) - set(ends))
    duplicates = {n: [(e.host, e.attempt) for e in es] for n, es in ends.items() if len(es) > 1}
    per_host = {h: sum(1 for r in records if host_of(r["worker_id"]) == h) for h in ids}
    report("three hosts", [f"{N} tasks in {elapsed:.1f}s ({N / elapsed:,.0f}/s)", f"per host {per_host}",
                           f"{len(duplicates)} duplicate side effects", f"{len(missing)} missing"])
    assert not missing, f"{len(missing)} completed tasks whose side effect never happened: {missing[:20]}"
    assert not duplicates, f"side effects that ran twice without any cut or kill: {list(duplicates.items())[:20]}"
    attempts = {r["attempts"] for r in records}
    assert attempts == {1}, f"attempts other than 1: {attempts}"
    assert all(per_host.values()), f"a host took no task: {per_host}"
    for h in hosts_:
        assert h.worker is not None
        log = h.worker.log_text()
        assert "Traceback" not in log and " ERROR " not in log, h.worker.log_tail()
