"""Running plain ``def`` tasks in worker-owned processes that can be killed one at a time.

A ``ProcessPoolExecutor`` cannot stop one task (arq #395), shares one result channel (and its
lock) between all children, and breaks as a whole when one child dies. So the worker runs its own
small pool instead: each process (a *slot*) runs one task at a time and has two pipes of its
own. The worker writes a job into the slot's job pipe; the child writes ``start``, ``progress``,
``log`` and then the outcome into its message pipe. A busy slot also holds the next job in its
pipe, so that the child goes on without waiting for the worker (a no-op task costs about 10 %
less this way); a job cancelled there is skipped by the child, which checks a shared number
before it starts each job. Children share nothing, and the worker never
takes a lock a child could hold: a child that dies in the middle of a write leaves a torn frame in
its own pipe, which is dropped with it. The worker reads every pipe without blocking, from its
event loop.

Who died is decided from facts, never from a wait: a child writes ``start`` (a blocking write,
complete before the task's body runs), and the worker learns of a child's exit from a pidfd. By
then everything the child wrote is in its pipe; the worker reads the pipe to its end and judges: a
task whose ``start`` arrived ran, and fails with its process's exit code; a task whose ``start``
did not arrive never ran and goes to another process. The other processes are not touched.

Messages cross only between the worker and the processes it spawned, so they are pickled; nothing
read from the database is ever unpickled.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import importlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import tracing
from .exceptions import format_exception, safe_str
from .progress import TaskProgress

log = logging.getLogger("litetask_async.executor")

# A job handed to processes that died before starting it this often fails instead of looping.
MAX_HANDOVERS = 5

_HEADER = struct.Struct("!I")
_READ_CHUNK = 1 << 16


class ProcessDied(Exception):
    """The pool process running a task died (killed, crashed) before the task returned."""


class ChildError(Exception):
    """An exception raised by a task inside a pool process, carried back as text."""

    def __init__(self, type_name: str, message: str, tb: str, original: BaseException | None,
                 pid: int) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message
        self.traceback = tb
        self.original = original
        self.pid = pid


# --- the child side ---------------------------------------------------------------------------

#: True inside a pool process (the in-memory broker refuses to open there).
IN_POOL_PROCESS = False

_out_fd = -1
_out_lock = threading.Lock()  # this child's own threads only; the worker never takes it
_child_task_id: str | None = None


def _send(msg: tuple[Any, ...]) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    with _out_lock:
        while view:
            view = view[os.write(_out_fd, view):]


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        chunk = os.read(fd, min(n, _READ_CHUNK))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _child_progress(task_id: str, pct: int, message: str | None) -> None:
    _send(("progress", task_id, (pct, message)))


class _ChildLogHandler(logging.Handler):
    """Sends log records emitted while a task runs in this pool process to the worker."""

    def emit(self, record: logging.LogRecord) -> None:
        task_id = _child_task_id
        if task_id is None or _out_fd < 0:
            return
        try:
            _send(("log", task_id, (record.created, record.levelname, self.format(record))))
        except Exception:
            self.handleError(record)


def _child_setup() -> None:
    global IN_POOL_PROCESS
    IN_POOL_PROCESS = True
    # Ctrl-C in a terminal, or systemd's SIGTERM to the whole control group, reaches every
    # process of the group; the worker decides what to stop (after its grace period it kills).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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


def resolve_task(module_name: str, attr: str) -> Any:
    """Find a registered task (or plain function) by module and name, in this process."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _child_main(jobs: multiprocessing.connection.Connection,
                messages: multiprocessing.connection.Connection, skip: Any) -> None:
    """A pool process: run the jobs the worker writes, one at a time, until the pipe closes.
    A job whose number the worker put in ``skip`` (cancelled while it waited in the pipe) is
    not started."""
    global _out_fd
    _out_fd = messages.fileno()
    _child_setup()
    fd = jobs.fileno()
    while True:
        header = _read_exactly(fd, _HEADER.size)
        if header is None:
            return  # the worker closed our pipe: stop
        frame = _read_exactly(fd, _HEADER.unpack(header)[0])
        if frame is None:
            return
        seq, *job = pickle.loads(frame)  # written by our parent, the worker
        if skip.value == seq:
            _send(("skipped", job[0], None))
        else:
            _run_job(*job)


def _run_job(task_id: str, name: str, module_name: str, attr: str, args_json: str,
             kwargs_json: str, trace_carrier: str | None) -> None:
    global _child_task_id
    # Before the body runs, and complete when os.write returns: if this process dies from here
    # on, the worker knows the task ran.
    _send(("start", task_id, os.getpid()))
    _child_task_id = task_id
    try:
        from .tasks import Task, encode_result

        task = resolve_task(module_name, attr)
        if not isinstance(task, Task):
            if not callable(task):
                raise TypeError(f"{module_name}.{attr} is not callable")
            # Registered with app.task(fn) without rebinding the module's name: wrap it here.
            task = Task(None, task, name=name)
        args, kwargs = task.decode_arguments(args_json, kwargs_json)
        with tracing.attached(trace_carrier):  # spans the body starts are the attempt's children
            result = task.invoke(args, kwargs, TaskProgress(task_id, _child_progress))
        msg: tuple[Any, ...] = ("result", task_id, encode_result(task.name, result))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they end this attempt only
        msg = ("error", task_id, _describe(exc))
    finally:
        _child_task_id = None
    _send(msg)


def _describe(exc: BaseException) -> tuple[str, str, str, bytes | None]:
    original: bytes | None
    try:
        # Kept only if it survives the trip back; many exceptions cannot be rebuilt.
        original = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(original)
    except BaseException:  # user exceptions may fail to pickle in any way
        original = None
    return type(exc).__name__, safe_str(exc), format_exception(exc), original


# --- the parent side --------------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    task_id: str
    seq: int
    frame: bytes
    future: asyncio.Future[str]
    started: asyncio.Event = field(default_factory=asyncio.Event)
    slot: _Slot | None = None
    kill_reason: str | None = None  # "timeout" or "cancel" once the worker killed its process
    handovers: int = 0  # times handed to a process that died before starting it


@dataclass(eq=False)
class _Slot:
    process: Any
    pid: int
    jobs_fd: int
    messages_fd: int
    exit_fd: int  # a pidfd (or the process sentinel): readable once the process has exited
    jobs_conn: Any  # the Connections owning the two fds above (they close them)
    messages_conn: Any
    skip: Any  # shared with the child: the number of a job it must not start
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    job: _Job | None = None  # running, or the next the child reads
    queued: _Job | None = None  # written behind ``job``, not started
    dead: bool = False
    is_pidfd: bool = False  # exit_fd is a pidfd: signals go through it, never to a reused pid
    killed: bool = False  # SIGKILL sent: no new job for it
    started_any: bool = False  # it reported starting a job (so it did boot)


class ProcessRunner:
    """Runs sync tasks in ``processes`` processes; kills one task without touching the others."""

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: list[_Slot] = []
        self._waiting: collections.deque[_Job] = collections.deque()
        self._closed = False
        self._early_deaths = 0  # processes that died before starting any job, in a row
        self._respawn: asyncio.TimerHandle | None = None
        self._seq = itertools.count(1)

    # --- public ---

    async def run(self, task_id: str, name: str, module_name: str, attr: str, args_json: str,
                  kwargs_json: str, timeout: float | None, trace_carrier: str | None = None) -> str:
        """Run one task; returns its result JSON. Cancelling the caller kills the task's process.

        ``timeout`` counts from the moment a process starts the task (not while it waits for a
        free process); on expiry the process is killed and ``TimeoutError`` is raised.
        """
        if self._closed:
            raise RuntimeError("the process pool is shut down")
        loop = self._loop = asyncio.get_running_loop()
        seq = next(self._seq)
        frame = pickle.dumps((seq, task_id, name, module_name, attr, args_json, kwargs_json, trace_carrier),
                             protocol=pickle.HIGHEST_PROTOCOL)
        job = _Job(task_id, seq, _HEADER.pack(len(frame)) + frame, loop.create_future())
        self._fill()
        self._waiting.append(job)
        self._dispatch()
        try:
            if timeout is None:
                return await asyncio.shield(job.future)
            started: asyncio.Future[Any] = asyncio.ensure_future(job.started.wait())
            try:
                await asyncio.wait([job.future, started], return_when=asyncio.FIRST_COMPLETED)
            finally:
                started.cancel()
            if not job.future.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(job.future), timeout)
            if not job.future.done() and job.slot is not None:
                self._read(job.slot)  # an outcome already in the pipe still counts
            if job.future.done():
                return job.future.result()
            self._kill(job, "timeout")
            raise TimeoutError(f"task ran longer than its timeout of {timeout:g}s; its process was killed")
        except asyncio.CancelledError:
            if not job.future.done():
                self._kill(job, "cancel")
            raise

    async def aclose(self, grace: float = 2.0) -> None:
        """Stop every process: idle ones exit when their job pipe closes, busy ones are killed."""
        self._closed = True
        if self._respawn is not None:
            self._respawn.cancel()
        for job in self._waiting:
            self._shut_out(job)
        self._waiting.clear()
        for slot in self._slots:
            if slot.queued is not None:
                self._shut_out(slot.queued)
                slot.queued = None
            if slot.job is not None:
                self._kill(slot.job, "cancel")
            if slot.out:
                assert self._loop is not None
                self._loop.remove_writer(slot.jobs_fd)
            slot.jobs_conn.close()  # EOF: an idle child returns from its loop
        deadline = time.monotonic() + grace
        while any(not s.dead for s in self._slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for slot in list(self._slots):
            if not slot.dead:
                _sigkill(slot)
        deadline = time.monotonic() + 5.0
        while any(not s.dead for s in self._slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    @staticmethod
    def _shut_out(job: _Job) -> None:
        if not job.future.done():
            job.future.set_exception(RuntimeError("the process pool was shut down"))
            job.future.exception()

    # --- processes ---

    def _fill(self) -> None:
        """Start processes until there are ``processes`` of them."""
        if self._closed or self._respawn is not None:
            return
        while len(self._slots) < self.processes:
            self._slots.append(self._spawn())

    def _spawn(self) -> _Slot:
        loop = self._loop
        assert loop is not None
        jobs_r, jobs_w = self._ctx.Pipe(duplex=False)
        msgs_r, msgs_w = self._ctx.Pipe(duplex=False)
        skip = self._ctx.RawValue("q", 0)
        proc = self._ctx.Process(target=_child_main, args=(jobs_r, msgs_w, skip), daemon=True,
                                 name="litetask-pool")
        try:
            proc.start()
        finally:
            jobs_r.close()  # the child has its own copies: our closed ends make EOFs reach us
            msgs_w.close()
        assert proc.pid is not None
        try:
            exit_fd, is_pidfd = os.pidfd_open(proc.pid), True
        except (AttributeError, OSError):
            exit_fd, is_pidfd = os.dup(proc.sentinel), False
        slot = _Slot(proc, proc.pid, jobs_w.fileno(), msgs_r.fileno(), exit_fd, jobs_w, msgs_r, skip,
                     is_pidfd=is_pidfd)
        os.set_blocking(slot.jobs_fd, False)
        os.set_blocking(slot.messages_fd, False)
        loop.add_reader(slot.messages_fd, self._read, slot)
        loop.add_reader(slot.exit_fd, self._exited, slot)
        return slot

    def _exited(self, slot: _Slot) -> None:
        """The slot's process has exited: read what it wrote, then judge its job."""
        loop = self._loop
        assert loop is not None
        loop.remove_reader(slot.exit_fd)
        self._read(slot)  # everything it wrote is in the pipe by now
        loop.remove_reader(slot.messages_fd)
        if slot.out and not slot.jobs_conn.closed:
            loop.remove_writer(slot.jobs_fd)
        exitcode = slot.process.exitcode  # a zombie already: no wait
        slot.dead = True
        slot.jobs_conn.close()
        slot.messages_conn.close()
        with contextlib.suppress(OSError):
            os.close(slot.exit_fd)
        self._slots.remove(slot)
        if slot.started_any or slot.killed:
            self._early_deaths = 0
        else:
            self._early_deaths += 1
        job, slot.job = slot.job, None
        queued, slot.queued = slot.queued, None
        if queued is not None and not queued.future.done():
            if self._closed:
                self._shut_out(queued)
            else:  # it never started, and its process died for another job's sake: no handover counted
                queued.slot = None
                self._waiting.appendleft(queued)
        if job is not None and not job.future.done():
            if job.kill_reason is not None:
                job.future.cancel()  # its caller has already raised TimeoutError or been cancelled
            elif job.started.is_set():
                job.future.set_exception(ProcessDied(_describe_exit(exitcode)))
            else:
                # It never ran: hand it to another process, unless processes keep dying first.
                job.handovers += 1
                if job.handovers >= MAX_HANDOVERS:
                    job.future.set_exception(ProcessDied(
                        f"{job.handovers} pool processes died before starting this task; the last "
                        f"{_describe_exit(exitcode).removeprefix('the task')}"))
                else:
                    job.slot = None
                    self._waiting.appendleft(job)
        if self._closed:
            return
        how = _describe_exit(exitcode).removeprefix("the task's process ")
        if job is None or job.kill_reason is None:
            log.warning("pool process %d %s", slot.pid, how)
        if self._early_deaths >= MAX_HANDOVERS:
            # Every new process dies before it can start a task (its start-up fails, say the
            # main module cannot be imported again under spawn): fail what waits, do not spin.
            why = (f"{self._early_deaths} pool processes in a row {how} before starting any task; "
                   "see the worker's log for why they fail to start")
            for waiting in self._waiting:
                if not waiting.future.done():
                    waiting.future.set_exception(ProcessDied(why))
            self._waiting.clear()
        if self._early_deaths >= 3:
            delay = min(0.1 * 2 ** (self._early_deaths - 3), 5.0)
            self._respawn = loop.call_later(delay, self._respawn_now)
            return
        self._fill()
        self._dispatch()

    def _respawn_now(self) -> None:
        self._respawn = None
        self._fill()
        self._dispatch()

    def _kill(self, job: _Job, reason: str) -> None:
        job.kill_reason = reason
        if job in self._waiting:
            self._waiting.remove(job)
            job.future.cancel()
            return
        slot = job.slot
        if slot is not None and slot.queued is job:
            # In the pipe behind another job: the child skips it. If the child has taken it up
            # already, its start message gets the process killed (_handle).
            slot.skip.value = job.seq
            job.future.cancel()
            return
        if slot is not None and not slot.dead and slot.job is job:
            slot.killed = True
            _sigkill(slot)

    # --- jobs to children ---

    def _dispatch(self) -> None:
        """Hand waiting jobs to idle processes, then one more to each busy one."""
        for queue_behind in (False, True):
            for slot in self._slots:
                if not self._waiting:
                    return
                if slot.dead or slot.killed or slot.jobs_conn.closed:
                    continue
                job = self._waiting[0]
                if slot.job is None:
                    slot.job = job
                elif queue_behind and slot.queued is None:
                    slot.queued = job
                else:
                    continue
                self._waiting.popleft()
                job.slot = slot
                self._write(slot, job.frame)

    def _write(self, slot: _Slot, data: bytes) -> None:
        if slot.out:
            slot.out += data
            return
        try:
            n = os.write(slot.jobs_fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            return  # the child is gone: its exit hands the job on
        if n < len(data):
            slot.out += data[n:]
            assert self._loop is not None
            self._loop.add_writer(slot.jobs_fd, self._flush, slot)

    def _flush(self, slot: _Slot) -> None:
        try:
            n = os.write(slot.jobs_fd, slot.out)
        except BlockingIOError:
            return
        except OSError:
            n = len(slot.out)  # the child is gone
        del slot.out[:n]
        if not slot.out:
            assert self._loop is not None
            self._loop.remove_writer(slot.jobs_fd)

    # --- messages from children ---

    def _read(self, slot: _Slot) -> None:
        """Read what the slot's process wrote, without blocking, and handle each whole message."""
        if slot.dead:
            return
        buf = slot.buf
        while True:
            try:
                chunk = os.read(slot.messages_fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                # EOF: the process is gone (its exit is reported by exit_fd) or closed its end.
                assert self._loop is not None
                self._loop.remove_reader(slot.messages_fd)
                break
            buf += chunk
            if len(chunk) < _READ_CHUNK:
                break
        pos = 0
        while len(buf) - pos >= _HEADER.size:
            size = _HEADER.unpack_from(buf, pos)[0]
            end = pos + _HEADER.size + size
            if len(buf) < end:
                break  # the rest is on its way, or torn by a process that died mid-write
            msg = pickle.loads(buf[pos + _HEADER.size:end])  # written by a process we spawned
            pos = end
            self._handle(slot, msg)
        del buf[:pos]

    def _handle(self, slot: _Slot, msg: tuple[Any, ...]) -> None:
        kind, task_id, value = msg
        if kind == "progress":
            self._on_progress(task_id, *value)
            return
        if kind == "log":
            self._on_log(task_id, *value)
            return
        job = slot.job
        if job is None or job.task_id != task_id:
            return
        if kind == "start":
            slot.started_any = True
            if job.kill_reason is not None:  # cancelled in the pipe, but the child took it up
                slot.killed = True
                _sigkill(slot)
                return
            job.started.set()
            self._on_pid(task_id, value)
            return
        slot.job, slot.queued = slot.queued, None
        if not job.future.done():
            if kind == "result":
                job.future.set_result(value)
            elif kind == "skipped":
                job.future.cancel()
            else:
                type_name, message, tb, original = value
                job.future.set_exception(
                    ChildError(type_name, message, tb, _unpickle_exception(original), slot.pid))
        self._dispatch()


def _sigkill(slot: _Slot) -> None:
    """Kill the slot's process. Through its pidfd where there is one: multiprocessing may reap
    a dead child (when it starts another) before the worker hears of the death, and a plain
    ``kill(pid)`` could then hit an unrelated process that reused the pid."""
    with contextlib.suppress(ProcessLookupError):
        if slot.is_pidfd:
            signal.pidfd_send_signal(slot.exit_fd, signal.SIGKILL)
        else:
            os.kill(slot.pid, signal.SIGKILL)


def _unpickle_exception(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        exc = pickle.loads(data)  # pickled by a process we spawned, from its own exception
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the task's process died (exit code unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"the task's process died from signal {name}"
    return f"the task's process exited with code {exitcode}"
