"""The app the simulated hosts' workers serve (tests/multihost).

Its tasks record every attempt in a shared file (``$LT_MH_EFFECTS``), one line per event:
``event task_number attempt hostname pid time``, written with one O_APPEND write, so lines from
many processes (in other namespaces: the file system is shared) never interleave. ``event`` is
``end`` when the body finished, ``start``/``stopped`` for the tasks that wait (``hold``) and
``start`` for the long ``work`` tasks.

A task knows its attempt number from the CONSUMER span the worker runs each attempt in
(README, "Traces": attribute ``litetask.task.attempt``): with ``$LT_MH_WORKER`` set, the module
installs OpenTelemetry's SDK provider (no exporter), which makes those spans recording.

``$LT_MH_TICK`` (seconds) adds the periodic task ``mh.tick``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from typing import Any

from litetask_async import LiteTask

app = LiteTask(os.environ.get("LITETASK_URL", "memory://multihost"))
log = logging.getLogger(__name__)

if os.environ.get("LT_MH_WORKER"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())


def current_attempt() -> int:
    """The attempt the calling task runs (0 where there is no recording span: pool processes)."""
    from opentelemetry import trace

    attributes = getattr(trace.get_current_span(), "attributes", None) or {}
    value = attributes.get("litetask.task.attempt")
    return value if isinstance(value, int) else 0


def effect(event: str, n: int, attempt: int) -> dict[str, Any]:
    """Append one event line to the effects file; returns what it recorded."""
    host, pid, now = socket.gethostname(), os.getpid(), time.time()
    fd = os.open(os.environ["LT_MH_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {n} {attempt} {host} {pid} {now:.6f}\n".encode())
    finally:
        os.close(fd)
    return {"n": n, "attempt": attempt, "host": host, "pid": pid, "local": now}


@app.task
async def work(n: int, seconds: float) -> dict[str, Any]:
    """Sleeps ``seconds`` (0: none), records its attempt, returns who ran which attempt. A
    long one (a second or more) also records its start."""
    attempt = current_attempt()
    if seconds >= 1.0:
        effect("start", n, attempt)
    if seconds > 0:
        await asyncio.sleep(seconds)
    return effect("end", n, attempt)


@app.task
async def hold(n: int, release: str, limit: float) -> dict[str, Any]:
    """Runs until the file ``release`` exists (at most ``limit`` s); records start, end and a stop."""
    attempt = current_attempt()
    effect("start", n, attempt)
    deadline = time.monotonic() + limit
    try:
        while not os.path.exists(release) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        effect("stopped", n, attempt)
        raise
    return effect("end", n, attempt)


async def _database_time() -> float:
    import asyncpg

    from litetask_async.brokers.postgres import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(os.environ["LITETASK_URL"]), timeout=10)
    try:
        return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8"))
    finally:
        await conn.close()


@app.task
async def clock_probe(n: int, seconds: float) -> dict[str, Any]:
    """Reads the database's clock as it starts, logs a line, sleeps; returns both clocks."""
    attempt = current_attempt()
    db = await _database_time()
    local = time.time()
    log.info("clock probe %d on %s: attempt %d", n, socket.gethostname(), attempt)
    if seconds > 0:
        await asyncio.sleep(seconds)
    return {**effect("end", n, attempt), "db": db, "local": local}


@app.task
def pool_probe(n: int, seconds: float) -> dict[str, Any]:
    """A plain ``def`` task (a pool process runs it): returns that process's clock."""
    local = time.time()
    # not time.sleep: under libfaketime 0.9.10 with the monotonic clock left alone (as the
    # harness runs it), its clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) fails with EINVAL
    threading.Event().wait(seconds)
    return {**effect("end", n, 0), "local": local}


@app.task
async def spawn_delayed(n: int, child: int, countdown: float, queue: str) -> dict[str, Any]:
    """Enqueues ``clock_probe(child)`` with a countdown into ``queue``, from this host."""
    attempt = current_attempt()
    task_id = await clock_probe.configure(countdown=countdown, queue=queue).adelay(child, 0.0)
    return {**effect("end", n, attempt), "child": task_id}


if os.environ.get("LT_MH_TICK"):
    @app.periodic(every=float(os.environ["LT_MH_TICK"]), name="mh.tick")
    async def tick() -> dict[str, Any]:
        return effect("tick", 0, current_attempt())
