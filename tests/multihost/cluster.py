"""What the multi-host tests share: a database on the namespaces' PostgreSQL, hosts with workers
serving tests/multihost/app.py, the side-effect file, and the queries that check the outcome."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from litetask_async import LiteTask, Task
from litetask_async.brokers.postgres import asyncpg_dsn
from tests.multihost import hosts
from tests.multihost.hosts import Host, Network, WorkerProcess

FINAL = ("completed", "failed", "cancelled")
#: What ``Task.delay_many`` takes: (args, kwargs) per task.
Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Effect:
    """One line of the side-effect file (see tests/multihost/app.py)."""

    event: str
    n: int
    attempt: int
    host: str
    pid: int
    at: float


class Cluster:
    """Hosts on ``network`` whose workers use the database ``url``; closed by the fixture."""

    def __init__(self, network: Network, url: str, tmp_path: Path) -> None:
        self.network = network
        self.url = url
        self.dsn = asyncpg_dsn(url)
        self.tmp_path = tmp_path
        self.effects_path = tmp_path / "effects.txt"
        self.hosts: list[Host] = []
        self.app = LiteTask(url)
        asyncio.run(self.app.migrate())  # once, before the workers race to do it

    # -- hosts and workers -------------------------------------------------------------------

    def add_hosts(self, count: int) -> list[Host]:
        """``count`` new hosts named host1, host2, ... (numbered on from the ones made before)."""
        env = {"LITETASK_URL": self.url, "LT_MH_WORKER": "1", "LT_MH_EFFECTS": str(self.effects_path)}
        made = [self.network.add_host(f"host{len(self.hosts) + i + 1}", env=env, log_dir=self.tmp_path)
                for i in range(count)]
        self.hosts += made
        return made

    def start(self, host: Host, *extra: str, faketime: str | None = None,
              env: dict[str, str] | None = None) -> WorkerProcess:
        """Start the host's worker (tests/multihost/app.py) with ``extra`` worker options."""
        return hosts.start_worker(host, extra, env=env, faketime=faketime)

    def wait_registered(self, hosts_: Sequence[Host], timeout: float = 60) -> dict[str, str]:
        """Wait until each host's worker has registered; returns {hostname: worker id}."""
        names = {h.name for h in hosts_}

        def registered() -> bool:
            for h in hosts_:
                if h.worker is not None and not h.worker.alive():
                    raise AssertionError(f"the worker of {h.name} exited ({h.worker.popen.returncode})\n"
                                         + h.worker.log_tail())
            return names <= set(self.worker_ids())

        self.wait_until(registered, timeout, f"the workers of {sorted(names)} to register")
        return {k: v for k, v in self.worker_ids().items() if k in names}

    def worker_ids(self) -> dict[str, str]:
        """{hostname: id} of the registered workers (the newest one per hostname)."""
        rows = self.fetch("SELECT hostname, id FROM litetask_workers ORDER BY started_at")
        return {r["hostname"]: r["id"] for r in rows}

    def stop_all(self, timeout: float = 30) -> dict[str, int]:
        """SIGTERM every running worker at once (one signal each: a second one would skip the
        grace period), then wait for them; {hostname: exit status}."""
        running = [h.worker for h in self.hosts if h.worker is not None and h.worker.alive()]
        for w in running:
            w.kill(signal.SIGTERM)
        codes = {}
        for w in running:
            try:
                codes[w.host.name] = w.wait(timeout)
            except subprocess.TimeoutExpired:
                w.kill(signal.SIGKILL)
                raise AssertionError(f"the worker of {w.host.name} did not stop within {timeout}s of "
                                     f"SIGTERM\n{w.log_tail()}") from None
        return codes

    def logs(self, hosts_: Iterable[Host] | None = None, chars: int = 3000) -> str:
        """The tails of the hosts' worker logs, for assertion messages."""
        return "\n".join(h.worker.log_tail(chars) for h in (hosts_ or self.hosts) if h.worker is not None)

    def close(self) -> None:
        for h in self.hosts:
            self.network.remove_host(h)
        self.app.close()

    # -- the database ------------------------------------------------------------------------

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def fetchval(self, sql: str, *args: Any) -> Any:
        rows = self.fetch(sql, *args)
        return rows[0][0] if rows else None

    def db_now(self) -> float:
        """The database's clock (epoch seconds)."""
        return float(self.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))

    def bind(self, task: Task[Any, Any]) -> Task[Any, Any]:
        """The app module's task, registered on the test's own app (to enqueue it from here)."""
        return self.app.task(name=task.name)(task.fn)

    def status_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.fetch("SELECT status, count(*) FROM litetask_tasks GROUP BY status")}

    def wait_final(self, total: int, timeout: float) -> None:
        """Wait until ``total`` tasks are final (completed, failed or cancelled)."""
        self.wait_until(lambda: sum(self.status_counts().get(s, 0) for s in FINAL) >= total, timeout,
                        f"{total} tasks to be final", detail=lambda: f"status counts: {self.status_counts()}")

    def records(self, where: str = "TRUE", *args: Any) -> list[asyncpg.Record]:
        """Tasks as stored (epoch-second timestamps, ``result`` decoded to a dict or None)."""
        return self.fetch(f"""
            SELECT id, name, status, attempts, rescues, worker_id, pid, args::text AS args,
                   result::text AS result, error->>'type' AS error_type, errors::text AS errors,
                   unique_key, queue,
                   extract(epoch FROM created_at)::float8 AS created_at,
                   extract(epoch FROM run_at)::float8 AS run_at,
                   extract(epoch FROM started_at)::float8 AS started_at,
                   extract(epoch FROM finished_at)::float8 AS finished_at
            FROM litetask_tasks WHERE {where} ORDER BY id""", *args)

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str,
                   detail: Callable[[], str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        extra = detail() if detail is not None else ""
        raise AssertionError(f"timed out after {timeout}s waiting for {what}. {extra}\n{self.logs()}")

    # -- side effects ------------------------------------------------------------------------

    def effects(self) -> list[Effect]:
        if not self.effects_path.exists():
            return []
        out = []
        for line in self.effects_path.read_text().splitlines():
            event, n, attempt, host, pid, at = line.split()
            out.append(Effect(event, int(n), int(attempt), host, int(pid), float(at)))
        return out

    def ends_by_task(self, event: str = "end") -> dict[int, list[Effect]]:
        """The ``end`` effects (a task body that finished) of each task number, or those of
        another ``event``."""
        out: dict[int, list[Effect]] = collections.defaultdict(list)
        for e in self.effects():
            if e.event == event:
                out[e.n].append(e)
        return out


def host_of(worker_id: str | None) -> str | None:
    """The hostname in a worker id (``host:pid:random``)."""
    return worker_id.split(":")[0] if worker_id else None


def decode(text: str | None) -> Any:
    import json

    return json.loads(text) if text is not None else None


def check_results_match_final_attempt(records: Sequence[asyncpg.Record]) -> list[str]:
    """Problems with completed tasks whose stored result is not their final attempt's: the result
    (written by the task) names the attempt and host; the record has attempts and worker_id."""
    problems = []
    for r in records:
        if r["status"] != "completed":
            continue
        res = decode(r["result"])
        if not isinstance(res, dict) or "attempt" not in res:
            problems.append(f"{r['id']} {r['name']}: result {r['result']!r} names no attempt")
        elif res["attempt"] != r["attempts"] or res["host"] != host_of(r["worker_id"]):
            problems.append(f"{r['id']} {r['name']}: result from attempt {res['attempt']} on {res['host']}, "
                            f"record at attempt {r['attempts']} on {r['worker_id']}")
    return problems


def exactly_once_rows(cluster: Cluster) -> list[str]:
    """Problems with the tables: a task still in the queue table, or in both, or twice."""
    rows = cluster.fetch("""
        SELECT id, count(*) AS n, bool_or(src = 'queue') AS queued FROM (
            SELECT id, 'queue' AS src FROM litetask_queue UNION ALL SELECT id, 'done' FROM litetask_done
        ) t GROUP BY id HAVING count(*) > 1 OR bool_or(src = 'queue')""")
    return [f"{r['id']}: {r['n']} rows{' (one still queued)' if r['queued'] else ''}" for r in rows]


def report(name: str, lines: Sequence[str]) -> None:
    """Print a scenario's report (shown with -s / in the captured output of a failure)."""
    print(f"\n[multihost] {name}: " + "; ".join(lines))
