"""Hosts whose clocks disagree: one worker runs five minutes ahead (libfaketime), one five minutes
behind, one on time. Everything that decides *when* goes by the database's clock: no healthy task
is rescued, a delayed task never starts before its ``run_at`` (nor waits for a wrong clock), a
periodic task runs once per tick, and every stored timestamp is consistent."""

from __future__ import annotations

import collections
import itertools
import random
from datetime import UTC, datetime

import pytest

from tests.multihost import app as mh
from tests.multihost import hosts
from tests.multihost.cluster import Cluster, check_results_match_final_attempt, decode, host_of, report

pytestmark = pytest.mark.multihost

SKEW = {"host1": ("+5m", 300.0), "host2": ("-5m", -300.0), "host3": (None, 0.0)}
TICK = 2.0
WINDOW = 14.0  # seconds of periodic ticks watched
LONG = 4.5  # longer than the heartbeat timeout (3 s): rescued if a heartbeat were judged on a skewed clock
GENERAL = 150


def test_clock_skew(cluster: Cluster) -> None:
    if hosts.faketime_library() is None:
        pytest.skip("libfaketime (Debian's faketime) is missing and could not be installed")
    hs = cluster.add_hosts(3)
    for h in hs:
        cluster.start(h, "--queues", f"default,{h.name}", "--processes", "2", faketime=SKEW[h.name][0],
                      env={"LT_MH_TICK": str(TICK)})
    ids = cluster.wait_registered(hs)
    t_start = cluster.db_now()
    work, probe, pool_probe, spawn = (cluster.bind(t) for t in (mh.work, mh.clock_probe, mh.pool_probe,
                                                                mh.spawn_delayed))
    kinds: dict[str, tuple[str, str]] = {}  # task id -> (host, kind)
    for i, h in enumerate(hs):
        base = 100 * (i + 1)
        on = {"queue": h.name}
        kinds[probe.configure(**on).delay(base, 0.0)] = (h.name, "probe")
        kinds[pool_probe.configure(**on).delay(base + 1, 0.2)] = (h.name, "pool")
        for n in (base + 2, base + 3):
            kinds[work.configure(**on).delay(n, LONG)] = (h.name, "long")
        kinds[probe.configure(countdown=5, **on).delay(base + 4, 0.0)] = (h.name, "countdown")
        eta = datetime.fromtimestamp(cluster.db_now() + 6, UTC)
        kinds[probe.configure(eta=eta, **on).delay(base + 5, 0.0)] = (h.name, "eta")
        kinds[spawn.configure(**on).delay(base + 6, base + 7, 5.0, h.name)] = (h.name, "spawn")
    rnd = random.Random(9)
    work.delay_many([((n, rnd.uniform(0.2, 1.0)), {}) for n in range(1000, 1000 + GENERAL)])
    total = len(kinds) + len(hs) + GENERAL  # + the probe each spawn task enqueues from its host

    cluster.wait_until(lambda: cluster.fetchval(
        "SELECT count(*) FROM litetask_tasks WHERE name <> 'mh.tick' AND status IN ('completed', 'failed', "
        "'cancelled')") >= total, 60, f"{total} tasks to be final")
    while cluster.db_now() < t_start + WINDOW:
        cluster.wait_until(lambda: cluster.db_now() >= t_start + WINDOW, WINDOW + 5, "the periodic window")
    t_end = cluster.db_now()
    workers = {w.hostname: w for w in cluster.app.workers_sync()}
    codes = cluster.stop_all()
    assert set(codes.values()) == {0}, f"exit statuses {codes}\n{cluster.logs()}"

    records = cluster.records()
    by_id = {r["id"]: r for r in records}
    ticks = [r for r in records if r["name"] == "mh.tick"]
    others = [r for r in records if r["name"] != "mh.tick"]
    assert len(others) == total, f"{len(others)} tasks, expected {total}"

    # the skew is real, in the workers and in their pool processes
    for tid, (host, kind) in kinds.items():
        r = by_id[tid]
        res = decode(r["result"])
        assert isinstance(res, dict), f"{kind} task {tid} on {host} has no result: {dict(r)}"
        offset = SKEW[host][1]
        if kind == "probe":
            assert abs(res["local"] - res["db"] - offset) < 5, f"{host}'s clock is not {offset:+g}s off: {res}"
        elif kind == "pool":
            assert abs(res["local"] - r["started_at"] - offset) < 5, f"{host}'s pool process: {res}, {dict(r)}"

    # no healthy task was rescued (the long ones outlive the heartbeat timeout)
    bad = [dict(r) for r in records if (r["status"], r["attempts"], r["rescues"], r["error_type"])
           != ("completed", 1, 0, None)]
    assert not bad, f"tasks rescued, retried or failed while every host was up: {bad[:10]}"
    assert not (problems := check_results_match_final_attempt(
        [r for r in records if r["name"] != "tests.multihost.app.pool_probe"])), problems

    # delayed tasks: never before run_at, on the database's clock, and not much after
    children = {decode(by_id[tid]["result"])["child"]: host for tid, (host, kind) in kinds.items() if kind == "spawn"}
    delayed = {tid: (host, kind) for tid, (host, kind) in kinds.items() if kind in ("countdown", "eta")}
    delayed.update({tid: (host, "spawned") for tid, host in children.items()})
    lines = []
    for tid, (host, kind) in delayed.items():
        r = by_id[tid]
        res = decode(r["result"])
        assert host_of(r["worker_id"]) == host, f"{tid} ran on {r['worker_id']}, not {host}"
        assert r["started_at"] >= r["run_at"], f"{kind} task {tid} on {host} started before its run_at: {dict(r)}"
        assert res["db"] >= r["run_at"], f"{kind} task {tid} on {host} saw the database's clock before run_at: {res}"
        lateness = r["started_at"] - r["run_at"]
        assert lateness < 2.0, f"{kind} task {tid} on {host} started {lateness:.2f}s after its run_at"
        if kind != "eta":  # countdown 5 s, counted on the database's clock (also from a skewed host)
            assert abs(r["run_at"] - r["created_at"] - 5.0) < 0.5, f"{kind} task {tid} from {host}: {dict(r)}"
        lines.append(f"{kind}@{host} +{lateness * 1000:.0f}ms")

    # stored timestamps are consistent, and task logs carry the database's clock
    for r in records:
        assert r["created_at"] <= r["started_at"] <= r["finished_at"], f"timestamps out of order: {dict(r)}"
    for tid, (host, kind) in kinds.items():
        if kind in ("probe", "countdown", "eta"):
            r = by_id[tid]
            logs = [rec for rec in cluster.app.task_logs_sync(tid) if "clock probe" in rec.message]
            assert logs, f"no task log of {tid}"
            at = logs[0].at.timestamp()
            assert r["started_at"] - 0.5 <= at <= r["finished_at"] + 0.5, \
                f"{host}'s task log time {logs[0].at} is off its task's run {dict(r)}"
    for h in hs:
        w = workers[h.name]
        assert abs(w.started_at.timestamp() - t_start) < 60 and abs(w.last_heartbeat.timestamp() - t_end) < 30, \
            f"{h.name}'s worker registration is off the database's clock: {w}"

    # the periodic task: one run per tick, ticks TICK apart on the database's clock, none early
    at_tick = {float(r["unique_key"].rsplit(":", 1)[1]): r for r in ticks}
    counted = collections.Counter(r["unique_key"] for r in ticks)
    assert all(c == 1 for c in counted.values()), f"ticks enqueued twice: {counted}"
    order = sorted(at_tick)
    assert len(order) >= WINDOW / TICK - 2, f"only {len(order)} ticks in {WINDOW}s: {order}"
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(order)]
    assert all(g == TICK for g in gaps), f"ticks not {TICK}s apart (a burst or a missed tick): {gaps}"
    for tick, r in at_tick.items():
        assert tick - 0.1 <= r["created_at"] <= tick + 1.0, (
            f"tick {tick} enqueued at {r['created_at']} ({r['created_at'] - tick:+.3f}s) on the database's "
            "clock: a worker went by its own clock")
        assert t_start - TICK <= tick <= t_end + TICK, f"tick {tick} outside the run [{t_start}, {t_end}]"
    tick_runs = collections.Counter(round(e.at) for e in cluster.effects() if e.event == "tick")
    assert sum(tick_runs.values()) == len(ticks), f"{sum(tick_runs.values())} tick runs for {len(ticks)} ticks"
    # enqueued TICK apart on the database's clock (when each starts depends on the backlog)
    enqueued = sorted(r["created_at"] for r in ticks)
    spacing = [round(b - a, 2) for a, b in itertools.pairwise(enqueued)]
    assert all(abs(s - TICK) < 0.6 for s in spacing), f"ticks not enqueued {TICK}s apart: {spacing}"
    enqueuers = collections.Counter(host_of(r["worker_id"]) for r in ticks)
    report("clock skew", [f"workers {ids}", f"delayed {', '.join(sorted(lines))}",
                          f"{len(ticks)} ticks enqueued {spacing}s apart, run by {dict(enqueuers)}"])
