"""The worker: an asyncio loop that claims tasks and runs them.

Side tasks, each named and watched (if one crashes, the worker stops instead of limping on):

- ``heartbeat``: marks this worker's running tasks alive, and puts back tasks of workers that
  stopped heartbeating (the rescue is one atomic statement, so exactly one worker rescues a task).
  A running task this worker no longer holds (it was cut off from the database longer than the
  heartbeat timeout, and another worker took the task up) is stopped here: its outcome would be
  refused anyway, as the broker applies an outcome only to the attempt it belongs to.
- ``cancel-watch``: notices cancellations requested from other processes and stops those tasks.
- ``flusher``: writes outcomes and progress in batches; on a database error it keeps them and
  retries with backoff, so results computed during an outage are written when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import tracing
from .brokers.base import Broker, RunningUpdate, error_payload
from .exceptions import BrokerUnavailable, Retry, SerializationError, WorkerError, safe_str
from .executor import ChildError, ProcessDied, ProcessRunner
from .progress import TaskProgress
from .records import (
    ClaimedTask,
    LogRecord,
    Outcome,
    OutcomeKind,
    WorkerInfo,
    storable_text,
    utc_from_timestamp,
)
from .tasks import CallOptions, Task, encode_result

if TYPE_CHECKING:
    from .app import LiteTask

log = logging.getLogger("litetask_async.worker")

MAX_LOGS_PER_ATTEMPT = 1000
#: Seconds a claim may be in flight before finished tasks' outcomes stop waiting to go with the
#: next claim and are written on their own.
CLAIM_PATIENCE = 0.5

# The task an asyncio task of the worker is running (contextvars follow each asyncio task).
_current_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("litetask_task", default=None)


class _TaskLogHandler(logging.Handler):
    """Captures log records emitted inside async tasks for the task's log."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        task_id = _current_task.get()
        if task_id is not None:
            try:
                self.worker._on_log(task_id, record.created, record.levelname, self.format(record))
            except Exception:
                self.handleError(record)


@dataclass
class _Running:
    claimed: ClaimedTask
    handle: asyncio.Task[None] | None = None
    stop_reason: str | None = None  # "cancel", "shutdown" or "lost" once we decided to stop it
    pid: int | None = None  # of the pool process running it
    logs: int = 0  # log records captured in this attempt


class Worker:
    """Claims tasks from the app's broker and runs them until stopped (SIGTERM/SIGINT or stop()).

    ``app.run_worker(...)`` and ``litetask worker`` build one and run it; build it yourself to
    stop it from your own code. For example::

        worker = Worker(app, concurrency=10, queues=["default"], install_signal_handlers=False)
        running = asyncio.create_task(worker.run())
        ...
        worker.stop()          # stop claiming; running tasks get the grace period
        await running

    Args:
        app: The app whose tasks and broker the worker uses.
        concurrency: Tasks run at once (async and pool tasks together).
        processes: Pool processes for plain ``def`` tasks (default: min(concurrency, CPUs)).
        queues: Take tasks of these queues only (default: every queue).
        heartbeat_interval: Seconds between heartbeats of running tasks (and rescue rounds).
        heartbeat_timeout: A running task whose heartbeat is older is put back (rescued); longer
            than ``heartbeat_interval``.
        grace_period: Seconds running tasks get to finish after SIGTERM/SIGINT or ``stop()``
            before they are interrupted and put back.
        max_rescues: Rescues after which a task ends ``failed`` with ``WorkerLost``.
        poll_interval: Longest idle wait between claims when no wake-up arrives.
        install_signal_handlers: Stop on SIGTERM/SIGINT (False when the caller owns the signals).
    """

    def __init__(
        self,
        app: LiteTask,
        *,
        concurrency: int = 8,
        processes: int | None = None,
        queues: Sequence[str] | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        grace_period: float = 30.0,
        max_rescues: int = 3,
        poll_interval: float = 1.0,
        install_signal_handlers: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if heartbeat_timeout <= heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        self.app = app
        self.concurrency = concurrency
        self.processes = processes or min(concurrency, os.cpu_count() or 1)
        if isinstance(queues, str):
            queues = [queues]
        self.queues: list[str] | None = list(queues) if queues else None
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.grace_period = grace_period
        self.max_rescues = max_rescues
        self.poll_interval = poll_interval
        self.install_signal_handlers = install_signal_handlers
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pid = os.getpid()
        self._running: dict[str, _Running] = {}
        self._outcomes: list[Outcome] = []
        self._progress: dict[str, RunningUpdate] = {}
        self._starts: dict[str, float] = {}  # task id -> monotonic time its pool process started it
        self._logs: list[LogRecord] = []
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._flush_wanted = asyncio.Event()
        self._outcome_ready = asyncio.Event()
        self._drained = asyncio.Event()  # set once no task can produce another outcome
        self._pool: ProcessRunner | None = None
        self._broker: Broker | None = None
        self._signals = 0
        self._retry_due: list[float] = []
        # the database's clock minus ours (Broker.clock_offset), kept fresh by the heartbeat
        self._clock_offset = 0.0
        self.processed = 0
        # Brokers that write outcomes and claim in one round trip (Broker.combines_finish_and_claim):
        # while the claim loop is about to claim (_claimer_armed), finished tasks' outcomes are
        # left for that claim to write; the flusher writes them otherwise, and always after a
        # combined call failed (_combine_paused) until one of its own writes succeeds.
        self._claimer_armed = False
        self._combine_paused = False
        self._claim_since: float | None = None  # monotonic start of the claim in flight

    # --- public control ---

    def stop(self) -> None:
        """Stop claiming; running tasks get the grace period. A second call stops them at once."""
        self._signals += 1
        if self._signals > 1:
            self.grace_period = 0
            for r in self._running.values():
                self._interrupt(r, "shutdown")
        self._stop_claiming()

    def _stop_claiming(self) -> None:
        self._stopping.set()
        self._slot_freed.set()  # the claim loop may be waiting for a free slot

    async def run(self) -> None:
        """Run until stopped; returns once running tasks are finished or put back."""
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)  # first: a SIGTERM while connecting stops cleanly
        try:
            self._broker = broker = await self.app.broker()
        except BaseException:
            for sig in installed:
                loop.remove_signal_handler(sig)
            raise
        handler = _TaskLogHandler(self)
        root = logging.getLogger()
        root.addHandler(handler)
        if not root.handlers[:-1] and (root.level == logging.NOTSET or root.level > logging.INFO):
            root.setLevel(logging.INFO)  # logging is not configured: let tasks' INFO be captured
        try:
            self._clock_offset = await broker.clock_offset()
        except Exception as exc:
            log.warning("could not read the database's clock (using this machine's): %s", exc)
        self.started_at = datetime.fromtimestamp(self._now(), UTC)
        try:
            await broker.register_worker(self.info())
        except Exception as exc:
            log.warning("could not register the worker (it runs anyway): %s", exc)
        side = {
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._cancel_watch_loop(), name="cancel-watch"),
        }
        if self.app.schedules:
            side.add(asyncio.create_task(self._scheduler_loop(), name="scheduler"))
        if self.app.result_ttl is not None:
            side.add(asyncio.create_task(self._retention_loop(), name="retention"))
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        claimer = asyncio.create_task(self._claim_loop(broker), name="claim")
        log.info("worker %s started: concurrency %d, tasks %s", self.id, self.concurrency,
                 ", ".join(sorted(self.app.tasks)) or "(none)")
        crashed: BaseException | None = None
        cancelled = False
        try:
            try:
                done, _ = await asyncio.wait({claimer, flusher, *side}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Cancelling the worker's task stops it at once: running tasks are interrupted
                # and put back, results already computed are still written.
                cancelled = True
                self.grace_period = 0
                done = set()
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    crashed = t.exception()
                    log.error("worker side task %r crashed: %r; stopping", t.get_name(), crashed)
            self._stop_claiming()
            with contextlib.suppress(asyncio.CancelledError):
                await claimer
            await self._drain()
        finally:
            for r in list(self._running.values()):  # cancelled while draining: stop them now
                self._interrupt(r, "shutdown")
            rest = [r.handle for r in self._running.values() if r.handle is not None]
            if rest:
                await asyncio.wait(rest)
            self._drained.set()
            for t in side:
                t.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            self._stop_claiming()
            self._flush_wanted.set()
            if not flusher.done():
                await self._final_flush(flusher)
            if self._outcomes:  # the flusher ended early (it crashed): one last try
                with contextlib.suppress(Exception):
                    await broker.finish(self._outcomes)
                    self._outcomes.clear()
            if self._pool is not None:
                await self._pool.aclose()
            for sig in installed:
                loop.remove_signal_handler(sig)
            root.removeHandler(handler)
            with contextlib.suppress(Exception):
                await broker.unregister_worker(self.id)
            log.info("worker %s stopped after %d tasks", self.id, self.processed)
        if cancelled:
            raise asyncio.CancelledError
        if crashed is not None:
            raise WorkerError(f"worker side task crashed: {crashed!r}") from crashed

    def _now(self) -> float:
        """Epoch seconds on the database's clock (as last measured)."""
        return time.time() + self._clock_offset

    def info(self) -> WorkerInfo:
        """What ``app.workers()`` shows about this worker."""
        now = datetime.fromtimestamp(self._now(), UTC)
        return WorkerInfo(self.id, socket.gethostname(), self.pid, self.queues, self.concurrency,
                          len(self._running), getattr(self, "started_at", now), now)

    # --- claiming ---

    def _disarm_claimer(self) -> None:
        """The claim loop goes to wait: outcomes left for its claim are the flusher's again."""
        self._claimer_armed = False
        if self._outcomes:
            self._flush_wanted.set()

    def _combine_outcomes(self, broker: Broker) -> bool:
        """Whether finished tasks' outcomes go with the next claim (one round trip) instead of
        being written on their own: the broker does that in one call, the claim loop is about
        to claim (a slot is free: an outcome frees one, so it will), nothing must be written
        before them (progress, logs, a pool start: the flusher keeps that order), no combined
        call failed since the flusher's last successful write, and no claim has been in flight
        for long (one stuck on a cut network would hold them back: the flusher writes them)."""
        stuck = self._claim_since is not None and time.monotonic() - self._claim_since > CLAIM_PATIENCE
        return (broker.combines_finish_and_claim and self._claimer_armed and not self._combine_paused
                and not stuck
                and not self._stopping.is_set() and len(self._running) < self.concurrency
                and not self._progress and not self._logs and not self._starts)

    async def _claim_loop(self, broker: Broker) -> None:
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                self._claimer_armed = True
                free = self.concurrency - len(self._running)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()  # stop() sets it too
                    # let the other tasks finishing in this turn free their slots: one bigger claim
                    await asyncio.sleep(0)
                    continue
                outcomes: list[Outcome] = []
                if self._outcomes and self._combine_outcomes(broker):
                    outcomes, self._outcomes = self._outcomes, []
                self._claim_since = time.monotonic()
                try:
                    if outcomes:
                        applied, claimed = await broker.finish_and_claim(outcomes, self.id, self.pid, free,
                                                                         self.queues)
                        _log_refused(outcomes, applied)
                    else:
                        claimed = await broker.claim(self.id, self.pid, free, self.queues)
                    backoff = 0.1
                except Exception as exc:
                    self._claim_since = None
                    if outcomes:  # not written: the flusher writes them, with its own retries
                        self._outcomes[:0] = outcomes
                        self._combine_paused = True
                    self._disarm_claimer()
                    log.warning("claim failed (%s); retrying in %.1fs", exc, backoff)
                    await self._wait_any(asyncio.sleep(backoff))
                    backoff = min(backoff * 2, 10.0)
                    continue
                self._claim_since = None
                for c in claimed:
                    self._start(c)
                if len(claimed) < free:
                    self._disarm_claimer()
                    await self._idle_wait(broker)
        finally:
            self._claim_since = None
            self._disarm_claimer()

    async def _idle_wait(self, broker: Broker) -> None:
        """Nothing (or not enough) to claim: wait for new work or a due task."""
        timeout = self._idle_timeout()
        try:
            due = await broker.next_due(self.queues)
        except Exception:
            due = None
        if due is not None and due > 0:
            # sleep until the nearest delayed task is due, not a fixed poll (a task due
            # already but not claimed waits for a concurrency slot: no busy loop)
            timeout = min(timeout, due + 0.005)
        await self._wait_any(broker.wait_for_work(timeout))

    def _idle_timeout(self) -> float:
        """How long to wait for a wake-up: the poll interval, or less when a task this worker
        put back for a retry falls due sooner."""
        now = time.monotonic()
        self._retry_due = [t for t in self._retry_due if t > now]
        if not self._retry_due:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, min(self._retry_due) - now + 0.005))

    async def _wait_any(self, aw: Awaitable[Any]) -> None:
        """Wait for ``aw`` or for the stop signal, whichever comes first."""
        inner = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({inner, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (inner, stop):
                f.cancel()
            await asyncio.gather(inner, stop, return_exceptions=True)

    def _start(self, claimed: ClaimedTask) -> None:
        old = self._running.get(claimed.id)
        if old is not None:
            # An earlier attempt of ours, taken up again after this worker missed heartbeats
            # (a network cut), before a heartbeat told us it was lost: the new attempt is the task's.
            log.warning("task %s claimed again (attempt %d) while its attempt %d still runs here; "
                        "stopping the old attempt", claimed.id, claimed.attempts, old.claimed.attempts)
            self._interrupt(old, "lost")
        r = _Running(claimed)
        self._running[claimed.id] = r
        r.handle = asyncio.create_task(self._execute(r), name=f"task:{claimed.name}:{claimed.id}")

    # --- running one task ---

    async def _execute(self, r: _Running) -> None:
        c = r.claimed
        try:
            with tracing.processing(c):
                outcome = await self._attempt(r)
        except asyncio.CancelledError:
            # Cancelled from outside (the loop is shutting down): put the task back, not lost.
            outcome = self._outcome(c, OutcomeKind.RELEASE)
        except BaseException as exc:  # a bug here must not lose the task, nor end the worker
            log.exception("internal error while running task %s", c.id)
            outcome = self._outcome(c, OutcomeKind.FAILED,
                                    error_json=error_payload(exc, "InternalError", attempt=c.attempts))
        if self._running.get(c.id) is r:
            del self._running[c.id]
        self._slot_freed.set()
        if r.stop_reason == "lost":
            return  # another worker runs it now: there is nothing of ours to write
        # its last progress update (if unwritten) stays: the flusher writes it before the outcome
        self._outcomes.append(outcome)
        self.processed += 1
        self._outcome_ready.set()
        self._flush_wanted.set()

    async def _attempt(self, r: _Running) -> Outcome:
        c = r.claimed
        task = self.app.tasks.get(c.name)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            return self._fail(c, None, "UnknownTask",
                              f"no task named {c.name!r} is registered in this worker (known: {known})")
        try:
            # also for pool tasks (their process decodes again): a bad payload is not retried
            args, kwargs = task.decode_arguments(c.args_json, c.kwargs_json)
        except Exception as exc:
            return self._fail(c, exc, "PayloadError", f"stored arguments cannot be decoded: {exc}")
        token = _current_task.set(c.id)
        try:
            if task.is_async:
                progress = TaskProgress(c.id, self._on_progress)
                coro = task.invoke(args, kwargs, progress)
                if task.timeout is None:
                    value = await coro
                else:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for runs the body in a task of
                    # its own, whose SystemExit/KeyboardInterrupt the event loop re-raises.
                    try:
                        async with asyncio.timeout(task.timeout):
                            value = await coro
                    except TimeoutError:
                        if r.stop_reason is not None:
                            raise asyncio.CancelledError() from None
                        raise TimeoutError(f"task ran longer than its timeout of {task.timeout:g}s "
                                           "and was cancelled") from None
                result_json = encode_result(task.name, value)
            else:
                result_json = await self._run_in_pool(task, c)
        except asyncio.CancelledError:
            if r.stop_reason == "cancel":
                return self._outcome(c, OutcomeKind.CANCELLED, error_json=error_payload(
                    None, "Cancelled", "the task was cancelled while running", attempt=c.attempts))
            if r.stop_reason in ("shutdown", "lost"):
                return self._outcome(c, OutcomeKind.RELEASE)
            raise
        except SerializationError as exc:
            return self._fail(c, exc, "SerializationError", str(exc), retry=False)
        except TimeoutError as exc:
            return self._fail(c, exc, "TaskTimeout", str(exc), task=task)
        except ProcessDied as exc:
            return self._fail(c, exc, "ProcessDied", str(exc), task=task)
        except Retry as exc:
            return self._fail(c, exc, "Retry", exc.reason, task=task, delay=exc.delay)
        except ChildError as exc:
            if isinstance(exc.original, Retry):
                return self._fail(c, exc.original, "Retry", exc.original.reason, task=task,
                                  delay=exc.original.delay, tb=exc.traceback)
            if exc.type_name == "SerializationError":
                return self._fail(c, None, "SerializationError", exc.message, retry=False, tb=exc.traceback)
            return self._fail(c, exc.original, exc.type_name, exc.message, task=task, tb=exc.traceback)
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, GeneratorExit raised by a task's body end that
            # attempt, as in a pool process; the worker goes on (it stops on its own signals).
            return self._fail(c, exc, type(exc).__name__, safe_str(exc), task=task)
        finally:
            _current_task.reset(token)
        return self._outcome(c, OutcomeKind.COMPLETED, result_json=result_json)

    async def _run_in_pool(self, task: Task[Any, Any], c: ClaimedTask) -> str:
        if self._pool is None:
            self._pool = ProcessRunner(self.processes, self._on_progress, self._on_pid, self._on_log)
        attr = getattr(task.fn, "__qualname__", task.fn.__name__)
        return await self._pool.run(c.id, task.name, task.fn.__module__, attr, c.args_json, c.kwargs_json,
                                    task.timeout, tracing.current_carrier())

    def _outcome(self, c: ClaimedTask, kind: OutcomeKind, **kw: Any) -> Outcome:
        r = self._running.get(c.id)
        return Outcome(task_id=c.id, worker_id=self.id, attempt=c.attempts, kind=kind,
                       pid=r.pid if r is not None else None, **kw)

    def _fail(self, c: ClaimedTask, exc: BaseException | None, type_name: str, message: str, *,
              task: Task[Any, Any] | None = None, retry: bool = True, tb: str | None = None,
              delay: float | None = None) -> Outcome:
        err = error_payload(exc, type_name, message, attempt=c.attempts, tb=tb)
        tracing.failed(exc, type_name, message)
        if task is not None and retry and c.attempts < c.max_attempts and (
                task.retry_on is None or isinstance(exc, (Retry, *task.retry_on))):
            if delay is None:
                # capped exponent: attempts given back (shutdowns) can push it past float range
                delay = task.retry_backoff * (2.0 ** min(c.attempts - 1, 64)) * random.uniform(0.5, 1.0)
            self._retry_due.append(time.monotonic() + delay)
            log.info("task %s (%s) failed on attempt %d, retrying in %.2fs: %s: %s",
                     c.id, c.name, c.attempts, delay, type_name, message)
            return self._outcome(c, OutcomeKind.RETRY, error_json=err, retry_delay=delay)
        log.info("task %s (%s) failed: %s: %s", c.id, c.name, type_name, message)
        return self._outcome(c, OutcomeKind.FAILED, error_json=err)

    def _interrupt(self, r: _Running, reason: str) -> None:
        if r.stop_reason is None or reason in ("cancel", "lost"):  # these beat a shutdown
            r.stop_reason = reason
        if r.handle is not None and not r.handle.done():
            r.handle.cancel()

    def _on_progress(self, task_id: str, pct: int, message: str | None = None) -> None:
        if task_id in self._running:
            prev = self._progress.get(task_id)
            self._progress[task_id] = RunningUpdate(
                task_id, pct, prev.pid if prev else None,
                message if message is not None else (prev.message if prev else None))
            self._flush_wanted.set()

    def _on_log(self, task_id: str, at: float, level: str, message: str) -> None:
        r = self._running.get(task_id)
        if r is None:
            return
        r.logs += 1
        if r.logs > MAX_LOGS_PER_ATTEMPT:
            if r.logs != MAX_LOGS_PER_ATTEMPT + 1:
                return
            level, message = "WARNING", f"more than {MAX_LOGS_PER_ATTEMPT} log records: the rest are dropped"
        self._logs.append(LogRecord(task_id, r.claimed.attempts,
                                    utc_from_timestamp(at + self._clock_offset),  # type: ignore[arg-type]
                                    level, storable_text(message[:10_000])))
        self._flush_wanted.set()

    def _on_pid(self, task_id: str, pid: int) -> None:
        """A pool process started the task's body: its pid and the real start are recorded."""
        r = self._running.get(task_id)
        if r is not None:
            r.pid = pid
            self._starts[task_id] = time.monotonic()
            prev = self._progress.get(task_id)
            self._progress[task_id] = RunningUpdate(task_id, prev.progress if prev else None, pid,
                                                    prev.message if prev else None)
            self._flush_wanted.set()

    # --- side tasks ---

    async def _heartbeat_loop(self) -> None:
        broker = self._broker
        assert broker is not None
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            running = dict(self._running)
            ids = list(running) + [o.task_id for o in self._outcomes]
            try:
                self._clock_offset = await broker.clock_offset()
                await broker.worker_heartbeat(self.id, len(self._running))
                if ids:
                    self._drop_lost(running, set(await broker.heartbeat(self.id, ids)))
                rescued = await broker.requeue_stalled(self.heartbeat_timeout, self.max_rescues)
                if rescued:
                    log.warning("took up %d task(s) of workers that stopped heartbeating: %s",
                                len(rescued), ", ".join(rescued[:10]))
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def _drop_lost(self, running: dict[str, _Running], held: set[str]) -> None:
        """Stop the tasks that were running here before the heartbeat and that this worker no
        longer holds: another worker took them up (this one missed heartbeats, cut off from the
        database) or they were ended from outside (a forced cancel)."""
        for tid, r in running.items():
            if tid not in held and self._running.get(tid) is r and r.stop_reason != "lost":
                log.warning("task %s (%s, attempt %d) is no longer held by this worker (taken up by "
                            "another after a missed heartbeat, or ended meanwhile); stopping it here",
                            tid, r.claimed.name, r.claimed.attempts)
                self._interrupt(r, "lost")

    async def _scheduler_loop(self) -> None:
        """Enqueue each periodic task's ticks as they come (exactly once across workers: the
        broker's compare-and-set on the last tick decides who enqueues)."""
        broker = self._broker
        assert broker is not None
        while True:
            now = self._now()  # ticks on the database's clock: every worker agrees on them
            for name, schedule in self.app.schedules.items():
                task = self.app.tasks[name]
                tick = schedule.latest_tick(now)
                try:
                    # the key names the tick; it also makes a second copy impossible while active
                    new = task.prepare([], {}, CallOptions(unique_key=f"periodic:{name}:{tick:.3f}"))
                    if await broker.enqueue_tick(name, tick, new):
                        log.info("enqueued periodic task %s for its tick at %s", name, tick)
                except Exception as exc:
                    log.warning("enqueuing periodic task %s failed: %s", name, exc)
            now = self._now()
            wake = min(s.next_tick(now) for s in self.app.schedules.values())
            await asyncio.sleep(min(max(0.0, wake - now) + 0.01, 5.0))

    async def _retention_loop(self) -> None:
        """Delete finished tasks older than the app's result_ttl, now and then."""
        broker = self._broker
        ttl = self.app.result_ttl
        assert broker is not None and ttl is not None
        interval = min(60.0, max(1.0, ttl.total_seconds() / 10))
        while True:
            try:
                n = await broker.purge(ttl.total_seconds())
                if n:
                    log.info("deleted %d finished task(s) older than %s", n, ttl)
            except Exception as exc:
                log.warning("deleting old finished tasks failed: %s", exc)
            await asyncio.sleep(interval)

    async def _cancel_watch_loop(self) -> None:
        broker = self._broker
        assert broker is not None
        interval = min(1.0, self.heartbeat_interval)
        while True:
            await asyncio.sleep(interval)
            if not self._running:
                continue
            try:
                ids = await broker.cancel_requested(list(self._running))
            except Exception as exc:
                log.warning("checking for cancellations failed: %s", exc)
                continue
            for tid in ids:
                r = self._running.get(tid)
                if r is not None:
                    log.info("cancelling running task %s on request", tid)
                    self._interrupt(r, "cancel")

    async def _flush_loop(self) -> None:
        broker = self._broker
        assert broker is not None
        backoff = 0.1
        while True:
            if self._outcomes:  # left for the claim in flight: look again if it takes long
                # asyncio.timeout, not wait_for: on 3.11 wait_for starts a task each time, and
                # this wait begins once per claim
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLAIM_PATIENCE):
                        await self._flush_wanted.wait()
            else:
                await self._flush_wanted.wait()
            self._flush_wanted.clear()
            if not self._outcomes and not self._stopping.is_set():
                # Only progress to write: gather more for a moment, but not past an outcome.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._outcome_ready.wait(), 0.2)
            self._outcome_ready.clear()
            if self._combine_outcomes(broker):
                outcomes = []  # the claim loop is about to claim: it writes them in that call
            else:
                outcomes, self._outcomes = self._outcomes, []
            updates = [self._with_start(u) for u in self._progress.values()]
            self._progress.clear()
            try:
                if updates:
                    with contextlib.suppress(Exception):  # progress is best effort
                        await broker.update_running(updates, self.id)
                if self._logs:
                    logs, self._logs = self._logs, []
                    try:
                        await broker.add_logs(logs)
                    except BrokerUnavailable:
                        self._logs[:0] = logs[-10 * MAX_LOGS_PER_ATTEMPT:]  # keep, bounded
                    except Exception as exc:
                        log.warning("dropping %d task log record(s): %s", len(logs), exc)
                if outcomes:
                    try:
                        _log_refused(outcomes, await broker.finish(outcomes))
                    except BrokerUnavailable:
                        raise
                    except Exception as exc:
                        # Not an outage: one outcome the database refuses. Write them one by one
                        # so it cannot hold the others back.
                        log.error("writing %d result(s) failed (%s); writing them one by one",
                                  len(outcomes), exc)
                        outcomes = await self._finish_one_by_one(broker, outcomes)
                        if outcomes:
                            raise BrokerUnavailable("the database went away meanwhile") from exc
                    self._combine_paused = False
                backoff = 0.1
            except Exception as exc:
                log.warning("writing %d result(s) failed (%s); keeping them, retrying in %.1fs",
                            len(outcomes), exc, backoff)
                self._outcomes[:0] = outcomes
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                self._flush_wanted.set()
                continue
            if self._drained.is_set() and not self._outcomes and not self._logs:
                return

    def _with_start(self, u: RunningUpdate) -> RunningUpdate:
        """The update, with the time since its pool process started it when that is news."""
        started = self._starts.pop(u.task_id, None)
        if started is None:
            return u
        return replace(u, started_ago=max(0.0, time.monotonic() - started))

    async def _finish_one_by_one(self, broker: Broker, outcomes: list[Outcome]) -> list[Outcome]:
        """Write each outcome alone; one the database refuses becomes a failure saying why.
        Returns the outcomes that could not be written because the database is unavailable."""
        left = []
        for o in outcomes:
            try:
                _log_refused([o], await broker.finish([o]))
                continue
            except BrokerUnavailable:
                left.append(o)
                continue
            except Exception as exc:
                err = error_payload(exc, "InternalError", f"the task's outcome could not be stored: {exc}",
                                    attempt=o.attempt)
                replacement = Outcome(o.task_id, o.worker_id, o.attempt, OutcomeKind.FAILED,
                                      error_json=err, pid=o.pid)
            try:
                await broker.finish([replacement])
            except Exception as exc:
                log.error("dropping the outcome of task %s (%s); it will be taken up again", o.task_id, exc)
        return left

    async def _final_flush(self, flusher: asyncio.Task[None], limit: float = 60.0) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(flusher), limit)
        except TimeoutError:
            flusher.cancel()
            log.error("could not write %d result(s) before stopping; their tasks will be "
                      "taken up again after the heartbeat timeout", len(self._outcomes))

    async def _drain(self) -> None:
        """After stop: let running tasks finish within the grace period, then put them back."""
        handles = [r.handle for r in self._running.values() if r.handle is not None]
        if handles:
            log.info("stopping: waiting up to %gs for %d running task(s)", self.grace_period, len(handles))
            await asyncio.wait(handles, timeout=self.grace_period)
        for r in list(self._running.values()):
            self._interrupt(r, "shutdown")
        rest = [r.handle for r in self._running.values() if r.handle is not None]
        if rest:
            await asyncio.wait(rest)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if not self.install_signal_handlers:
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or not supported on this platform
        if installed:
            # `litetask worker` blocks them while it starts (block_stop_signals): one that came
            # meanwhile is delivered now, to stop()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, installed)
        return installed


def _log_refused(outcomes: Sequence[Outcome], applied: Sequence[str]) -> None:
    """Say which outcomes the broker refused: their attempt is no longer the task's current one
    (another worker took it up after this one missed heartbeats, or it was ended meanwhile)."""
    if len(applied) == len(outcomes):
        return
    done = set(applied)
    for o in outcomes:
        if o.task_id not in done:
            log.warning("outcome of task %s (attempt %d, %s) refused: the task is no longer this "
                        "worker's attempt (taken up by another worker after a missed heartbeat, or "
                        "ended meanwhile); the newer attempt's outcome stands", o.task_id, o.attempt,
                        o.kind.value)


def block_stop_signals() -> None:
    """Hold SIGTERM and SIGINT back until a worker of this process installs its handlers (the
    worker unblocks them): a signal that arrives while the app is imported or the database
    connected then stops the worker cleanly instead of killing the process. For the main
    thread of a process that is about to run a worker (``litetask worker``); threads started
    meanwhile keep them blocked, so they reach the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
