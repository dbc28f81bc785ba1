"""Prometheus metrics, read from the database at each scrape.

The process that serves ``/metrics`` (the dashboard, or :meth:`LiteTask.metrics_asgi`) is
usually not a worker, so nothing is counted in memory: a custom collector turns a snapshot of the
database (``name_counts()``, ``durations()``, ``stats()``) into metric families.

Counters count the tasks *still stored*: ``litetask_tasks_completed_total{task="x"}`` is the
number of completed ``x`` tasks in the table. When ``purge()`` or ``result_ttl`` deletes finished
tasks the counter goes down, which Prometheus treats as a counter reset (``rate()`` and
``increase()`` cope; the absolute value restarts from what is left).

Exposed:

- ``litetask_tasks_enqueued_total{task}``: tasks stored, whatever their status
- ``litetask_tasks_completed_total{task}``, ``litetask_tasks_failed_total{task}``,
  ``litetask_tasks_cancelled_total{task}``
- ``litetask_tasks_retried_total{task}``: tasks that ran more than one attempt
- ``litetask_task_duration_seconds{task}``: histogram of run time (started to finished) of
  completed and failed tasks, buckets ``DURATION_BUCKETS``
- ``litetask_queue_depth{queue}``: pending tasks (delayed ones included)
- ``litetask_tasks{queue,status}``: tasks stored, by queue and status
- ``litetask_oldest_pending_age_seconds``: how long the oldest due task has waited (0 if none)
- ``litetask_workers_alive``: workers whose heartbeat is recent
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..brokers.base import DURATION_BUCKETS
from ..db_errors import connection_refusal
from ..exceptions import LiteTaskError
from ..records import TaskStatus
from . import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from ..app import LiteTask

RESET_NOTE = "; counts tasks still stored (a purge looks like a counter reset)"


@dataclass(frozen=True)
class MetricsSnapshot:
    """What one scrape read from the database."""

    name_counts: list[tuple[str, str, int, int]] = field(default_factory=list)
    durations: list[tuple[str, int, int, float]] = field(default_factory=list)
    by_queue: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_pending_age: float | None = None
    workers_alive: int = 0


async def take_snapshot(app: LiteTask) -> MetricsSnapshot:
    """Read everything the metrics need, on the running event loop's broker."""
    broker = await app.broker()
    name_counts = await broker.name_counts()
    durations = await broker.durations()
    stats = await app.stats()
    return MetricsSnapshot(
        name_counts=list(name_counts), durations=list(durations),
        by_queue=stats["by_queue"], oldest_pending_age=stats["oldest_pending_age"],
        workers_alive=int(stats["workers_alive"]),
    )


class _Families:
    """One scrape's metric families, typed (``add_metric`` differs per kind)."""

    def __init__(self) -> None:
        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc + RESET_NOTE, labels=["task"])

        self.enqueued = counter("litetask_tasks_enqueued", "Tasks enqueued, any status")
        self.completed = counter("litetask_tasks_completed", "Tasks completed")
        self.failed = counter("litetask_tasks_failed", "Tasks failed (after their last attempt)")
        self.cancelled = counter("litetask_tasks_cancelled", "Tasks cancelled")
        self.retried = counter("litetask_tasks_retried", "Tasks that ran more than one attempt")
        self.duration = HistogramMetricFamily(
            "litetask_task_duration_seconds",
            "Run time of completed and failed tasks (last attempt's start to finish)" + RESET_NOTE,
            labels=["task"])
        self.depth = GaugeMetricFamily(
            "litetask_queue_depth", "Pending tasks (delayed ones included)", labels=["queue"])
        self.tasks = GaugeMetricFamily(
            "litetask_tasks", "Tasks stored, by queue and status", labels=["queue", "status"])
        self.oldest = GaugeMetricFamily(
            "litetask_oldest_pending_age_seconds", "How long the oldest due pending task has waited (0: none)")
        self.workers = GaugeMetricFamily("litetask_workers_alive", "Workers with a recent heartbeat")

    def all(self) -> list[Metric]:
        return [self.enqueued, self.completed, self.failed, self.cancelled, self.retried, self.duration,
                self.depth, self.tasks, self.oldest, self.workers]


def metric_families(snap: MetricsSnapshot) -> list[Metric]:
    """The metric families of one snapshot."""
    fam = _Families()
    per_name: dict[str, dict[str, int]] = {}
    retried: dict[str, int] = {}
    for name, status, n, more_than_once in snap.name_counts:
        by_status = per_name.setdefault(name, {})
        by_status[status] = by_status.get(status, 0) + int(n)
        retried[name] = retried.get(name, 0) + int(more_than_once or 0)
    n_buckets = len(DURATION_BUCKETS) + 1
    hist: dict[str, tuple[list[int], list[float]]] = {}
    for name, bucket, n, seconds in snap.durations:
        counts, total = hist.setdefault(name, ([0] * n_buckets, [0.0]))
        counts[min(max(int(bucket), 0), n_buckets - 1)] += int(n)
        total[0] += float(seconds or 0.0)
    by_kind = {"completed": fam.completed, "failed": fam.failed, "cancelled": fam.cancelled}
    for name in sorted(per_name.keys() | hist.keys()):
        by_status = per_name.get(name, {})
        fam.enqueued.add_metric([name], sum(by_status.values()))
        for status, family in by_kind.items():
            family.add_metric([name], by_status.get(status, 0))
        fam.retried.add_metric([name], retried.get(name, 0))
        counts, total = hist.get(name, ([0] * n_buckets, [0.0]))
        cumulative, buckets = 0, []
        for bound, n in zip([*DURATION_BUCKETS, float("inf")], counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative)))
        fam.duration.add_metric([name], buckets, sum_value=total[0])
    for queue in sorted(snap.by_queue):
        by_status = snap.by_queue[queue]
        fam.depth.add_metric([queue], by_status.get(TaskStatus.PENDING.value, 0))
        for st in TaskStatus:
            fam.tasks.add_metric([queue, st.value], by_status.get(st.value, 0))
    fam.oldest.add_metric([], float(snap.oldest_pending_age or 0.0))
    fam.workers.add_metric([], snap.workers_alive)
    return fam.all()


class LiteTaskCollector(Collector):
    """A prometheus-client collector that reads the task database when collected.

    ``LiteTaskCollector(snapshot=await take_snapshot(app))`` serves one snapshot (what the ASGI
    apps do, on their own event loop). ``LiteTaskCollector(app)`` reads through the app's sync
    facade at every ``collect()``, for ``prometheus_client.REGISTRY.register(...)`` in a process
    that serves metrics from a thread (``start_http_server``); do not collect it from a thread
    running an event loop, which it would block.
    """

    def __init__(self, app: LiteTask | None = None, *, snapshot: MetricsSnapshot | None = None) -> None:
        if app is None and snapshot is None:
            raise TypeError("LiteTaskCollector needs an app or a snapshot")
        self._app = app
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """The metric families, from the snapshot or from a fresh read of the database."""
        snap = self._snapshot
        if snap is None:
            app = self._app
            assert app is not None
            snap = app._call_sync(take_snapshot, app)
        yield from metric_families(snap)

    def describe(self) -> Iterable[Metric]:
        """The families without samples (names for the registry's duplicate check)."""
        return _Families().all()


async def render_metrics(app: LiteTask, accept: str = "") -> tuple[bytes, str]:
    """Read the database and render the exposition format the ``Accept`` header asks for
    (Prometheus text by default, OpenMetrics on request). Returns (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiteTaskCollector(snapshot=await take_snapshot(app)))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def metrics_app(app: LiteTask) -> ASGIApp:
    """A minimal ASGI app serving the metrics on every path (GET/HEAD), with lifespan support;
    needs only prometheus-client."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await app.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        method = scope.get("method", "GET")
        headers: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store")]
        if method not in ("GET", "HEAD"):
            status, body = 405, b"method not allowed: use GET\n"
            headers += [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8")]
        else:
            accept = ""
            for key, value in scope.get("headers", []):
                if key.lower() == b"accept":
                    accept = value.decode("latin-1")
            try:
                body, content_type = await render_metrics(app, accept)
                status = 200
            except Exception as exc:
                # Unreachable, or refusing the URL's role or database: the scraper sees a 503.
                reason = exc if isinstance(exc, LiteTaskError) else connection_refusal(exc)
                if reason is None:
                    raise
                status, body, content_type = 503, f"database unavailable: {reason}\n".encode(), "text/plain; charset=utf-8"
            headers.append((b"content-type", content_type.encode("latin-1")))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return asgi


