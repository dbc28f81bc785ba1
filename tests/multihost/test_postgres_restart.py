"""PostgreSQL restarts while three hosts work: nothing is lost, every task ends in one final
state, and the workers carry on by themselves."""

from __future__ import annotations

import random
import time

import pytest

from litetask_async import BrokerUnavailable
from tests.multihost import app as mh
from tests.multihost.cluster import (
    Calls,
    Cluster,
    check_results_match_final_attempt,
    decode,
    exactly_once_rows,
    host_of,
    report,
)
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.multihost

BATCH = 1500


def test_postgres_restart_under_three_hosts(cluster: Cluster, mh_server: PostgresServer) -> None:
    hs = cluster.add_hosts(3)
    for h in hs:
        cluster.start(h)
    ids = cluster.wait_registered(hs)
    work = cluster.bind(mh.work)
    rnd = random.Random(3)
    work.delay_many([((n, rnd.uniform(0.02, 0.08)), {}) for n in range(BATCH)])
    cluster.wait_until(lambda: cluster.status_counts().get("completed", 0) >= BATCH // 4, 60,
                       "a quarter of the first batch")
    t_down = cluster.db_now()
    t0 = time.monotonic()
    # restart() with a second of downtime: without it (fsync off) the server is back within
    # ~0.1 s, and the workers would hardly see connections refused
    mh_server.stop("fast")
    time.sleep(1.0)
    mh_server.start()
    restart_took = time.monotonic() - t0
    t_up = cluster.db_now()
    at_restart = cluster.status_counts()

    # every worker comes back by itself: heartbeats after the restart
    def heartbeating_again() -> bool:
        rows = cluster.fetch("SELECT id FROM litetask_workers WHERE last_heartbeat > to_timestamp($1)", t_up)
        return {r["id"] for r in rows} >= set(ids.values())

    cluster.wait_until(heartbeating_again, 60, "every worker to heartbeat after the restart")
    second: Calls = [((n, rnd.uniform(0.01, 0.03)), {}) for n in range(BATCH, 2 * BATCH)]
    # The test's own app is a producer whose pooled connection the restart closed (while idle).
    # The server is up: an enqueue should succeed. Checked last, so that the workers' checks run.
    producer_error: BrokerUnavailable | None = None
    try:
        work.delay_many(second)
    except BrokerUnavailable as exc:
        producer_error = exc
        work.delay_many(second)
    cluster.wait_final(2 * BATCH, 120)
    alive = {h.name: h.worker is not None and h.worker.alive() for h in hs}
    assert all(alive.values()), f"a worker died: {alive}\n{cluster.logs()}"
    codes = cluster.stop_all()
    assert set(codes.values()) == {0}, f"exit statuses {codes}\n{cluster.logs()}"

    records = cluster.records()
    statuses = {r["status"] for r in records}
    assert len(records) == 2 * BATCH and statuses == {"completed"}, (len(records), statuses)
    assert not (bad := exactly_once_rows(cluster)), f"tasks not in exactly one final row: {bad[:20]}"
    assert not (bad := check_results_match_final_attempt(records)), f"stale results: {bad[:20]}"
    ends = cluster.ends_by_task()
    missing = sorted(set(range(2 * BATCH)) - set(ends))
    assert not missing, f"completed tasks whose side effect never happened: {missing[:20]}"
    by_n = {decode(r["args"])[0]: r for r in records}
    duplicates = {n: [(e.host, e.attempt) for e in es] for n, es in ends.items() if len(es) > 1}
    unexplained = {n: runs for n, runs in duplicates.items() if by_n[n]["rescues"] == 0}
    assert not unexplained, f"tasks that ran twice though never taken up from a lost worker: {unexplained}"
    rescued = sum(1 for r in records if r["rescues"])
    after = {h: sum(1 for r in records if host_of(r["worker_id"]) == h and r["finished_at"] > t_up) for h in ids}
    assert all(after.values()), f"a worker completed nothing after the restart: {after}\n{cluster.logs()}"
    for h in hs:
        assert h.worker is not None
        assert "failed" in h.worker.log_text(), f"{h.name}'s worker never noticed the restart\n{h.worker.log_tail()}"
    report("postgres restart", [f"restarted in {restart_took:.2f}s ({t_up - t_down:.2f}s on its clock) with "
                                f"{at_restart} ", f"completed after it per host {after}",
                                f"{rescued} task(s) taken up again", f"{len(duplicates)} duplicate side effect(s)",
                                f"producer's first enqueue after it: {producer_error or 'ok'}"])
    assert producer_error is None, (
        "the first enqueue after the restart (server up again) raised: the broker's pool handed out an "
        f"idle connection the restart had closed: {producer_error!r}")
