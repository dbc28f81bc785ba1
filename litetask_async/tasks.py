"""Task: a registered function, and the ways to enqueue it."""

from __future__ import annotations

import inspect
import itertools
import math
import os
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .progress import TaskProgress
from .records import EARLIEST_RUN_AT_TS, LATEST_RUN_AT, LATEST_RUN_AT_TS, NewTask
from .serialization import dumps, is_model_class, loads, rebuild, resolved_hints

if TYPE_CHECKING:
    from .app import LiteTask

P = ParamSpec("P")
R = TypeVar("R")

Call = tuple[Sequence[Any], dict[str, Any]]


class Task(Generic[P, R]):
    """A function registered with ``@app.task``.

    Calling the task object runs the function directly, in the caller. ``delay``/``adelay`` store
    it for a worker and return its id at once.

    For example::

        @app.task(retries=2)
        def add(a: int, b: int) -> int:
            return a + b

        add(2, 3)                                   # 5, run here
        task_id = add.delay(2, 3)                   # stored; a worker runs it
        task_id = await add.adelay(2, 3)            # the same, from async code
        add.configure(queue="urgent", countdown=30).delay(2, 3)
    """

    def __init__(
        self,
        app: LiteTask | None,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_backoff: float = 1.0,
        retry_on: tuple[type[BaseException], ...] | None = None,
        timeout: float | None = None,
        queue: str = "default",
        priority: int = 0,
        max_concurrency: int | None = None,
    ) -> None:
        if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"retries must be an int from 0 to {MAX_RETRIES}, got {retries!r}")
        if not _is_number(retry_backoff) or not 0 <= retry_backoff <= MAX_DURATION:
            raise ValueError(f"retry_backoff must be a finite number of seconds >= 0 (at most "
                             f"{MAX_DURATION:.0f}, 10,000 years), got {retry_backoff!r}")
        if max_concurrency is not None and (
                not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= MAX_INT32):
            raise ValueError(f"max_concurrency must be an int from 1 to {MAX_INT32} (or None for no "
                             f"limit), got {max_concurrency!r}")
        if timeout is not None and (not _is_number(timeout) or not 0 < timeout <= MAX_DURATION):
            raise ValueError(f"timeout must be a positive, finite number of seconds (at most "
                             f"{MAX_DURATION:.0f}, 10,000 years) or None, got {timeout!r}")
        _check_priority(priority)
        self.app = app
        self.fn = fn
        self.name = check_text(name or f"{fn.__module__}.{fn.__qualname__}", "task name")
        check_text(queue, "queue")
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.retry_on = retry_on
        self.timeout = timeout
        self.queue = queue
        self.priority = priority
        self.max_concurrency = max_concurrency
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__qualname__ = getattr(fn, "__qualname__", self.name)
        self.__module__ = fn.__module__
        self.__wrapped__ = fn

        sig = inspect.signature(fn)
        hints = resolved_hints(fn)
        self.progress_param: str | None = None
        params = []
        for pname, param in sig.parameters.items():
            hint = hints.get(pname, param.annotation)
            if hint is TaskProgress or TaskProgress in typing.get_args(hint):  # also TaskProgress | None
                self.progress_param = pname
                continue
            params.append(param)
        self._call_signature = sig.replace(parameters=params)
        # The common call needs no binding: exactly the positional parameters, none with a default.
        plain = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty
                    for p in params)
        self._plain_arity = len(params) if plain else -1
        self._by_keyword = not any(
            p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)
            for p in sig.parameters.values())
        self._models = {p: hints[p] for p in sig.parameters if is_model_class(hints.get(p))}

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    # --- enqueue ---

    def prepare(self, args: Sequence[Any], kwargs: dict[str, Any],
                options: CallOptions | None = None) -> NewTask:
        """Check the arguments against the signature and serialise them; nothing is stored."""
        return self.prepare_many([(args, kwargs)], options)[0]

    def configure(self, **options: Any) -> TaskCall[P, R]:
        """Per-call options, without changing the task: ``queue``, ``priority``, ``countdown``
        (seconds from now), ``eta`` (a timezone-aware datetime), ``unique_key``.

        ``send.configure(countdown=30).delay("a@b.c")``. Unknown option names raise at once.

        For example::

            send.configure(queue="urgent", priority=10).delay("a@b.c")
            await send.configure(eta=datetime(2027, 1, 1, tzinfo=UTC)).adelay("a@b.c")
            await send.configure(unique_key="welcome:42").adelay("a@b.c")   # one active task per key
        """
        return TaskCall(self, CallOptions.build(options))

    @property
    def _app(self) -> LiteTask:
        if self.app is None:
            raise RuntimeError(f"task {self.name!r} is not registered with an app")
        return self.app

    def prepare_many(self, calls: Iterable[Call], options: CallOptions | None = None) -> list[NewTask]:
        """:meth:`prepare` for many calls: the options are resolved once, the ids drawn at once."""
        calls = calls if isinstance(calls, list) else list(calls)
        o = options or _NO_OPTIONS
        name, arity, bind = self.name, self._plain_arity, self._call_signature.bind
        queue = o.queue if o.queue is not None else self.queue
        priority = o.priority if o.priority is not None else self.priority
        max_attempts, countdown, eta = self.retries + 1, o.countdown, o.eta
        unique_key, max_concurrency = o.unique_key, self.max_concurrency
        what_args, what_kwargs = f"arguments of task {name!r}", f"keyword arguments of task {name!r}"
        news = []
        for (args, kwargs), task_id in zip(calls, new_ids(len(calls)), strict=True):
            if kwargs or len(args) != arity:
                try:
                    bind(*args, **kwargs)
                except TypeError as exc:
                    raise TypeError(f"bad arguments for task {name!r}: {exc}") from None
            news.append(NewTask(
                task_id, name, dumps(args if type(args) is tuple or type(args) is list else list(args), what_args),
                dumps(kwargs, what_kwargs), queue, priority, max_attempts, countdown, eta, unique_key,
                max_concurrency))
        return news

    async def _submit(self, calls: Iterable[Call], options: CallOptions | None,
                      connection: Any = None) -> list[str]:
        return await self._app._enqueue(self.prepare_many(calls, options), connection)

    def _submit_sync(self, calls: Iterable[Call], options: CallOptions | None) -> list[str]:
        return self._app._enqueue_sync(self.prepare_many(calls, options))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue from async code; returns the task's id once it is stored.

        ``connection=conn`` (an SQLAlchemy ``AsyncConnection``, PostgreSQL broker) writes the task
        inside the caller's transaction: it exists, and workers see it, only once that commits.
        """
        connection = _pop_connection(kwargs)
        return (await self._app._enqueue(self.prepare_many([(args, kwargs)], None), connection))[0]

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue from sync code (also from threads); returns the task's id once it is stored."""
        return self._submit_sync([(args, kwargs)], None)[0]

    async def adelay_many(self, calls: Iterable[Call], *, connection: Any = None) -> list[str]:
        """Enqueue many calls, given as ``(args, kwargs)`` pairs, in one write; ids in order.

        ``connection=`` as for :meth:`adelay`.

        For example::

            ids = await add.adelay_many([((1, 2), {}), ((3, 4), {})])
            ids = await send.adelay_many([((to,), {"subject": "Hi"}) for to in recipients])
        """
        return await self._submit(calls, None, connection)

    def delay_many(self, calls: Iterable[Call]) -> list[str]:
        """Sync twin of :meth:`adelay_many`."""
        return self._submit_sync(calls, None)

    # --- run (used by the worker, and inside pool processes) ---

    def decode_arguments(self, args_json: str, kwargs_json: str) -> tuple[list[Any], dict[str, Any]]:
        """Stored JSON to call arguments, with models rebuilt from their dicts."""
        try:
            args = [] if args_json == "[]" else loads(args_json)
            kwargs = {} if kwargs_json == "{}" else loads(kwargs_json)
        except RecursionError:
            raise ValueError("stored arguments are nested too deeply to decode") from None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("stored arguments are not a JSON list and object")
        if not kwargs and len(args) == self._plain_arity and not self._models:
            return args, kwargs  # exactly the positional parameters: they fit, nothing to rebuild
        try:
            bound = self._call_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ValueError(f"stored arguments do not fit {self.name}{self._call_signature}: {exc}") from None
        if self._models:
            for pname, tp in self._models.items():
                if pname in bound.arguments:
                    bound.arguments[pname] = rebuild(tp, bound.arguments[pname])
            args, kwargs = list(bound.args), dict(bound.kwargs)
        return args, kwargs

    def invoke(self, args: list[Any], kwargs: dict[str, Any], progress: TaskProgress) -> Any:
        """Call the function, injecting ``progress`` where it is asked for."""
        fn: Callable[..., Any] = self.fn
        if self.progress_param is None:
            return fn(*args, **kwargs)
        if self._by_keyword:
            # Bind to the signature without the progress parameter, then call by name, so that
            # a progress parameter placed before others does not shift positional arguments.
            bound = self._call_signature.bind(*args, **kwargs)
            named = dict(bound.arguments)
            for pname, param in self._call_signature.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD and pname in named:
                    named.update(named.pop(pname))
            return fn(**named, **{self.progress_param: progress})
        return fn(*args, **kwargs, **{self.progress_param: progress})


def _pop_connection(kwargs: dict[str, Any]) -> Any:
    """Take ``connection=`` out of the call's kwargs when it is an SQLAlchemy AsyncConnection
    (a task's own parameter named ``connection`` with another value is left alone)."""
    conn = kwargs.get("connection")
    if conn is None:
        return None
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection
    except ImportError:  # pragma: no cover
        return None
    if isinstance(conn, AsyncConnection):
        return kwargs.pop("connection")
    return None


@dataclass(frozen=True)
class CallOptions:
    """Options of one enqueue (see :meth:`Task.configure`); None keeps the task's own."""

    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: float | None = None
    unique_key: str | None = None

    @classmethod
    def build(cls, options: dict[str, Any]) -> CallOptions:
        known = {"queue", "priority", "countdown", "eta", "unique_key"}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        eta = options.get("eta")
        countdown = options.get("countdown")
        if eta is not None and countdown is not None:
            raise ValueError("give countdown or eta, not both")
        if eta is not None:
            if not isinstance(eta, datetime):
                raise TypeError(f"eta must be a datetime, got {type(eta).__name__}")
            if eta.tzinfo is None or eta.utcoffset() is None:
                raise ValueError("eta must be timezone-aware (e.g. datetime(..., tzinfo=timezone.utc)); "
                                 "a naive datetime is ambiguous")
            ts = eta.timestamp()
            if not EARLIEST_RUN_AT_TS <= ts < LATEST_RUN_AT_TS:
                raise ValueError(f"eta must be from the year 1 to before {LATEST_RUN_AT:%Y-%m-%d} (UTC), "
                                 f"what every broker can store and read back; got {eta.isoformat()}")
            eta_ts: float | None = ts
        else:
            eta_ts = None
        if countdown is not None:
            if isinstance(countdown, timedelta):
                countdown = countdown.total_seconds()
            if not _is_number(countdown) or not 0 <= countdown < math.inf:
                raise ValueError(f"countdown must be a finite number of seconds >= 0, got {countdown!r}")
            if countdown >= LATEST_RUN_AT_TS - time.time():
                raise ValueError(f"countdown={countdown!r} puts the task after {LATEST_RUN_AT:%Y-%m-%d} "
                                 "(UTC), beyond what every broker can store and read back")
        priority = options.get("priority")
        if priority is not None:
            _check_priority(priority)
        queue = options.get("queue")
        if queue is not None:
            check_text(queue, "queue")
        unique_key = options.get("unique_key")
        if unique_key is not None:
            check_text(unique_key, "unique_key", empty_ok=True)
        return cls(queue, priority, None if countdown is None else float(countdown), eta_ts, unique_key)


_NO_OPTIONS = CallOptions()


class TaskCall(Generic[P, R]):
    """A task with per-call options, from :meth:`Task.configure`; the task itself is unchanged."""

    __slots__ = ("options", "task")

    def __init__(self, task: Task[P, R], options: CallOptions) -> None:
        self.task = task
        self.options = options

    def __repr__(self) -> str:
        return f"<TaskCall {self.task.name} {self.options}>"

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """As :meth:`Task.adelay`, with these options."""
        connection = _pop_connection(kwargs)
        return (await self.task._submit([(args, kwargs)], self.options, connection))[0]

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """As :meth:`Task.delay`, with these options."""
        return self.task._submit_sync([(args, kwargs)], self.options)[0]

    async def adelay_many(self, calls: Iterable[Call], *, connection: Any = None) -> list[str]:
        """As :meth:`Task.adelay_many`, with these options (a ``unique_key`` applies to each call)."""
        return await self.task._submit(calls, self.options, connection)

    def delay_many(self, calls: Iterable[Call]) -> list[str]:
        """As :meth:`Task.delay_many`, with these options."""
        return self.task._submit_sync(calls, self.options)


#: Bounds of what every broker stores (PostgreSQL's integer columns are 32-bit).
MIN_INT32, MAX_INT32 = -(2**31), 2**31 - 1
#: More retries than this would overflow the backoff (``retry_backoff * 2**(attempt-1)``).
MAX_RETRIES = 1000
#: The longest duration an option or argument may give (seconds): 10,000 years. Longer ones
#: overflow PostgreSQL's intervals or the event loop's clock arithmetic.
MAX_DURATION = 10_000 * 365.25 * 86_400


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_priority(priority: object) -> None:
    if not isinstance(priority, int):
        raise TypeError(f"priority must be an int, got {type(priority).__name__}")
    if not MIN_INT32 <= priority <= MAX_INT32:
        raise ValueError(f"priority must be from {MIN_INT32} to {MAX_INT32} (32 bits), got {priority}")


def check_text(value: object, field: str, *, empty_ok: bool = False) -> str:
    """``value`` if it is a string every broker can store as a task's ``field`` (task name,
    queue, unique key); else TypeError or ValueError naming the field."""
    if not isinstance(value, str) or not (value or empty_ok):
        raise TypeError(f"{field} must be a {'' if empty_ok else 'non-empty '}string, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"{field} {value!r} contains a NUL character (\\x00), which PostgreSQL "
                         "cannot store; it is refused on every broker alike")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{field} {value!r} is not valid Unicode text (it contains a lone "
                             "surrogate); it is refused on every broker alike") from None
    return value


def _new_id_base() -> int:
    return int.from_bytes(os.urandom(10), "big") >> 1  # 79 bits: base + counter never wraps


_id_base = _new_id_base()
_id_counter = itertools.count()
_id_last_ms = 0


def _reseed_ids() -> None:
    # A forked child must not repeat its parent's ids.
    global _id_base, _id_counter
    _id_base, _id_counter = _new_id_base(), itertools.count()


os.register_at_fork(after_in_child=_reseed_ids)


def new_ids(n: int) -> list[str]:
    """``n`` new task ids: 32 hex digits, the time in milliseconds (12 digits) then 80 bits
    made of a random number drawn once per process plus a counter (``next`` on an
    ``itertools.count`` is atomic, so threads never share one). Ids made later in a process sort
    later, also within a millisecond, so the id is the enqueue order (SQLite claims ties and
    lists by it) and an insert lands at the right edge of the id index: one page, mostly
    cached and already dirty, instead of a random page (in PostgreSQL about a tenth of a batch
    insert's time and fewer full-page images in the WAL; in SQLite, fewer pages per commit).
    Two processes' ids of the same millisecond interleave by their random numbers."""
    global _id_last_ms
    ms = time.time_ns() // 1_000_000
    if ms < _id_last_ms:
        ms = _id_last_ms  # the clock stepped back: keep the order
    else:
        _id_last_ms = ms
    prefix, base, counter = f"{ms:012x}", _id_base, _id_counter
    if n == 1:  # every delay()/adelay(): without the comprehension's frame, 0.48 vs 0.76 us
        return [f"{prefix}{base + next(counter):020x}"]
    return [f"{prefix}{base + next(counter):020x}" for _ in range(n)]


def new_task(name: str, args: Sequence[Any], kwargs: dict[str, Any], *, queue: str = "default",
             priority: int = 0, max_attempts: int = 1, countdown: float | None = None,
             eta: float | None = None, unique_key: str | None = None,
             max_concurrency: int | None = None) -> NewTask:
    """A new pending task with its arguments serialised (raises SerializationError)."""
    return NewTask(
        id=new_ids(1)[0],
        name=name,
        args_json=dumps(list(args), f"arguments of task {name!r}"),
        kwargs_json=dumps(kwargs, f"keyword arguments of task {name!r}"),
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        countdown=countdown,
        eta=eta,
        unique_key=unique_key,
        max_concurrency=max_concurrency,
    )


def encode_result(task_name: str, value: Any) -> str:
    """A task's return value as stored JSON (models as dicts)."""
    if value is None:
        return "null"
    return dumps(value, f"the result of task {task_name!r}")
