"""Running plain ``def`` tasks in a process pool that can kill one task.

A ``ProcessPoolExecutor`` cannot stop a task once it started (arq #395). So when a pool task
times out or is cancelled, its process is killed. That breaks the pool: every other future in it
fails with ``BrokenProcessPool``. We then build a new pool and submit the innocent tasks again
(their processes were only terminated by the executor's clean-up); a task whose own process died
(killed from outside, segfault, ``os._exit``) gets a :class:`ProcessDied` error for that attempt.

Children report "started (pid)" and progress through a multiprocessing queue, one queue per pool
generation: a process killed while writing may leave a queue's lock held, so a broken pool's queue
is dropped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .progress import TaskProgress

log = logging.getLogger("litetask_async.executor")

# How often a task is resubmitted after the pool broke under it before it counts as the culprit.
MAX_RESUBMITS = 5


class ProcessDied(Exception):
    """The pool process running a task died (killed, crashed) before the task returned."""


class ChildError(Exception):
    """An exception raised by a task inside a pool process, carried back as text."""

    def __init__(self, type_name: str, message: str, tb: str, original: BaseException | None,
                 pid: int, sent: int = 0) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback = tb
        self.original = original
        self.pid = pid
        self.sent = sent

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChildError, (self.type_name, self.message, self.traceback, self.original, self.pid,
                             self.sent))


# --- the child side ---------------------------------------------------------------------------

_child_queue: Any = None


def _child_init(q: Any) -> None:
    global _child_queue
    _child_queue = q
    # Ctrl-C in a terminal reaches the whole process group; the worker decides what to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.addHandler(_ChildLogHandler())
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)  # a fresh process: let INFO reach the task's log
    # A worker killed with SIGKILL cannot stop its pool: the orphan would finish its task (a
    # duplicate run, since the task is rescued elsewhere) and linger. Die with the parent.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                         name="litetask-parent-watch").start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _child_progress(task_id: str, pct: int, message: str | None) -> None:
    global _child_sent
    _child_queue.put(("progress", task_id, (pct, message)))
    _child_sent += 1


class _ChildLogHandler(logging.Handler):
    """Sends log records emitted while a task runs in this pool process to the worker."""

    def emit(self, record: logging.LogRecord) -> None:
        task_id = _child_task_id
        if task_id is None or _child_queue is None:
            return
        global _child_sent
        try:
            _child_queue.put(("log", task_id, (record.created, record.levelname, self.format(record))))
            _child_sent += 1
        except Exception:
            self.handleError(record)


_child_task_id: str | None = None
# Progress and log messages sent for the current task: the result says how many, so the worker
# can wait for the ones still on their way (they travel apart from the result).
_child_sent = 0


def resolve_task(module_name: str, attr: str) -> Any:
    """Find a registered task (or plain function) by module and name, in this process."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _child_run(task_id: str, name: str, module_name: str, attr: str, args_json: str,
               kwargs_json: str) -> tuple[int, str, int]:
    global _child_task_id, _child_sent
    _child_queue.put(("start", task_id, os.getpid()))
    _child_task_id = task_id
    _child_sent = 0
    from .tasks import Task, encode_result

    try:
        task = resolve_task(module_name, attr)
        if not isinstance(task, Task):
            if not callable(task):
                raise TypeError(f"{module_name}.{attr} is not callable")
            # Registered with app.task(fn) without rebinding the module's name: wrap it here.
            task = Task(None, task, name=name)
        args, kwargs = task.decode_arguments(args_json, kwargs_json)
        result = task.invoke(args, kwargs, TaskProgress(task_id, _child_progress))
        # The pid travels with the result: the "start" message may arrive after it.
        return os.getpid(), encode_result(task.name, result), _child_sent
    except BaseException as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            # Kept only if it survives the trip back; many exceptions cannot be rebuilt.
            pickle.loads(pickle.dumps(exc))
            original: BaseException | None = exc
        except Exception:
            original = None
        raise ChildError(type(exc).__name__, str(exc), tb, original, os.getpid(), _child_sent) from None
    finally:
        _child_task_id = None


# --- the parent side --------------------------------------------------------------------------


@dataclass
class _Generation:
    pool: ProcessPoolExecutor
    queue: Any
    number: int
    procs: dict[int, Any] = field(default_factory=dict)  # pid -> Process, kept past a break
    reader: threading.Thread | None = None
    broken: bool = False


@dataclass
class _Job:
    task_id: str
    pid: int | None = None
    process: Any = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    kill_when_started: bool = False
    killed: bool = False
    generation: int = 0  # the pool generation it was last submitted to
    resubmits: int = 0
    received: int = 0  # progress and log messages received from its process
    message_seen: asyncio.Event = field(default_factory=asyncio.Event)


class ProcessRunner:
    """Runs sync tasks in a pool of ``processes`` processes; kill one task without losing others."""

    def __init__(
        self,
        processes: int,
        on_progress: Callable[[str, int, str | None], None],
        on_pid: Callable[[str, int], None],
        on_log: Callable[[str, float, str, str], None],
    ) -> None:
        self.processes = processes
        self._on_progress = on_progress
        self._on_pid = on_pid
        self._on_log = on_log
        # spawn, not fork (the worker has threads) nor forkserver (its children are not ours, so
        # their exit codes, which tell a crashed task from an innocent one, cannot be read).
        self._ctx = multiprocessing.get_context("spawn")
        self._gen: _Generation | None = None
        self._numbers = 0
        self._jobs: dict[str, _Job] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rebuilds = 0

    def _generation(self) -> _Generation:
        if self._gen is None or self._gen.broken:
            if self._gen is not None:
                self._retire(self._gen)
            self._loop = asyncio.get_running_loop()
            # SimpleQueue: put() writes to the pipe before returning (no feeder thread), so a
            # task's start message is out before its body runs, even if the process dies at once.
            q = self._ctx.SimpleQueue()
            self._numbers += 1
            pool = ProcessPoolExecutor(self.processes, mp_context=self._ctx,
                                       initializer=_child_init, initargs=(q,))
            gen = _Generation(pool, q, self._numbers)
            gen.reader = threading.Thread(target=self._read, args=(gen,), daemon=True,
                                          name=f"litetask-pool-reader-{gen.number}")
            gen.reader.start()
            self._gen = gen
        return self._gen

    def _read(self, gen: _Generation) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            try:
                msg = gen.queue.get()
            except (EOFError, OSError, ValueError, TypeError):
                return
            if msg is None:
                return
            try:
                loop.call_soon_threadsafe(self._handle, gen, msg)
            except RuntimeError:
                return

    def _handle(self, gen: _Generation, msg: tuple[Any, ...]) -> None:
        kind, task_id, value = msg
        job = self._jobs.get(task_id)
        if kind in ("progress", "log"):
            if job is not None and job.generation == gen.number:
                job.received += 1
                job.message_seen.set()
            if kind == "progress":
                self._on_progress(task_id, *value)
            else:
                self._on_log(task_id, *value)
            return
        if job is None or job.generation != gen.number:
            return  # a late message from a pool that broke: the job was resubmitted since
        job.pid = value
        gen.procs.update(gen.pool._processes or {})
        job.process = gen.procs.get(value)
        job.started.set()
        self._on_pid(task_id, value)
        if job.kill_when_started:
            self._kill(job)
            self._jobs.pop(task_id, None)

    def _kill(self, job: _Job) -> None:
        if job.pid is None:
            job.kill_when_started = True
            return
        job.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(job.pid, signal.SIGKILL)

    async def run(self, task_id: str, name: str, module_name: str, attr: str, args_json: str,
                  kwargs_json: str, timeout: float | None) -> str:
        """Run one task; returns its result JSON. Cancelling the caller kills the task's process.

        ``timeout`` counts from the moment a process starts the task (not while it waits for a
        free process); on expiry the process is killed and ``TimeoutError`` is raised.
        """
        job = self._jobs[task_id] = _Job(task_id)
        try:
            while True:
                gen = self._generation()
                job.generation = gen.number
                try:
                    fut: Future[tuple[int, str, int]] = gen.pool.submit(
                        _child_run, task_id, name, module_name, attr, args_json, kwargs_json)
                except BrokenProcessPool:
                    # The executor noticed a dead process before we did: nothing of ours ran.
                    gen.broken = True
                    continue
                afut = asyncio.wrap_future(fut)
                afut.add_done_callback(_consume)
                try:
                    if timeout is None:
                        return await self._result(job, await asyncio.shield(afut))
                    waiter: asyncio.Future[Any] = asyncio.ensure_future(job.started.wait())
                    try:
                        await asyncio.wait([afut, waiter], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    if afut.done():
                        return await self._result(job, afut.result())
                    try:
                        return await self._result(job, await asyncio.wait_for(asyncio.shield(afut), timeout))
                    except TimeoutError:
                        if afut.done() and not afut.cancelled():
                            # finished right at the deadline: its process may already run
                            # another task, which must not be killed
                            return await self._result(job, afut.result())
                        self._kill(job)
                        raise TimeoutError(f"task ran longer than its timeout of {timeout:g}s; its process was killed") from None
                except ChildError as exc:
                    self._note_pid(job, exc.pid)
                    await self._settle(job, exc.sent)
                    raise
                except BrokenProcessPool:
                    gen.broken = True
                    gen.procs.update(gen.pool._processes or {})
                    if job.pid is None:
                        # its start message may still be on its way from the reader thread
                        await asyncio.sleep(0.2)
                    if job.killed:
                        raise ProcessDied("the task's process was killed") from None
                    proc = job.process or (gen.procs.get(job.pid) if job.pid is not None else None)
                    exitcode = proc.exitcode if proc is not None else None
                    if exitcode is not None and exitcode != -signal.SIGTERM:
                        raise ProcessDied(_describe_exit(exitcode)) from None
                    # Innocent: queued, or terminated only because another process broke the pool.
                    # Unless it keeps happening: a process that dies within milliseconds of
                    # starting may not have reported its start, and must not loop forever.
                    job.resubmits += 1
                    if job.resubmits > MAX_RESUBMITS:
                        raise ProcessDied(
                            f"the process pool broke {job.resubmits} times while this task was in "
                            "flight; its process most likely died right after starting it") from None
                    self.rebuilds += gen.number == self._numbers
                    job.pid = job.process = None
                    job.started.clear()
                    job.received = 0
                    continue
                except asyncio.CancelledError:
                    if not fut.cancel():
                        self._kill(job)
                    raise
        finally:
            if not job.kill_when_started:
                self._jobs.pop(task_id, None)
            # else: handed to a process but not started yet; its start message finds the job
            # here and kills that process (the entry goes with it).

    def _note_pid(self, job: _Job, pid: int) -> None:
        if job.pid != pid:
            job.pid = pid
            self._on_pid(job.task_id, pid)

    async def _result(self, job: _Job, value: tuple[int, str, int]) -> str:
        pid, result_json, sent = value
        self._note_pid(job, pid)
        await self._settle(job, sent)
        return result_json

    @staticmethod
    async def _settle(job: _Job, sent: int, limit: float = 2.0) -> None:
        """Wait (briefly) for the task's progress and log messages still in the pipe."""
        deadline = asyncio.get_running_loop().time() + limit
        while job.received < sent:
            job.message_seen.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.message_seen.wait(), left)

    def shutdown(self) -> None:
        """Stop the pool; running tasks' processes are killed."""
        gen, self._gen = self._gen, None
        if gen is None:
            return
        for job in list(self._jobs.values()):
            self._kill(job)
        gen.pool.shutdown(wait=True, cancel_futures=True)
        self._retire(gen)

    @staticmethod
    def _retire(gen: _Generation) -> None:
        gen.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            gen.queue.put(None)
        if gen.reader is not None:
            gen.reader.join(timeout=1.0)
            if not gen.reader.is_alive():
                gen.queue.close()


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (a killed task's future fails after we moved on)."""
    if not fut.cancelled():
        fut.exception()


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"the task's process died from signal {name}"
    return f"the task's process exited with code {exitcode}"
