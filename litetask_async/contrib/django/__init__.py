"""litetask_async in a Django project (``pip install "litetask_async[django]"``).

Settings::

    INSTALLED_APPS = [..., "litetask_async.contrib.django"]
    LITETASK = {"url": "postgresql://user@db/app"}   # any LiteTask option: auto_migrate, result_ttl

Tasks live in the ``tasks.py`` of installed apps, which are imported when Django starts::

    # myapp/tasks.py
    from litetask_async.contrib.django import app

    @app.task
    def send_invoice(invoice_id: int) -> None: ...

From views: ``send_invoice.delay(invoice.pk)`` (returns the task's id), or
``send_invoice.delay_on_commit(invoice.pk)`` inside ``transaction.atomic()``: stored only when the
transaction commits, never when it rolls back (:func:`enqueue_on_commit` takes a database alias,
per-call options and task names). Workers: ``python manage.py litetask_worker`` with the options
of ``litetask worker``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from ...app import DEFAULT_URL, LiteTask
from ...exceptions import ConfigurationError
from ...records import NewTask
from ...tasks import Task, TaskCall, check_text, new_task

__all__ = ["DjangoLiteTask", "DjangoTask", "PendingTask", "enqueue_on_commit", "get_app"]

P = ParamSpec("P")
R = TypeVar("R")

SETTING = "LITETASK"


class PendingTask:
    """A task that will be enqueued when the surrounding transaction commits, as returned by
    :meth:`DjangoTask.delay_on_commit` and :func:`enqueue_on_commit`.

    - ``id``: the id the task gets, known at once, so it can be saved in the same transaction
      (with a ``unique_key`` that an active task holds at commit, no task is added and ``id``
      becomes that task's id, as ``delay()`` would return it).
    - ``enqueued``: True once the task is stored, right after the commit (at once outside a
      transaction). It stays False if the transaction rolls back: then nothing is stored and no
      task will ever have ``id``.
    """

    __slots__ = ("_app", "_new", "enqueued", "id", "using")

    def __init__(self, app: LiteTask, new: NewTask, using: str | None) -> None:
        self._app = app
        self._new = new
        self.id: str = new.id
        self.enqueued = False
        self.using = using

    def __repr__(self) -> str:
        state = "enqueued" if self.enqueued else "waiting for commit"
        return f"<PendingTask {self._new.name} {self.id} ({state})>"

    def _enqueue(self) -> None:
        self.id = self._app._enqueue_sync([self._new])[0]
        self.enqueued = True


class DjangoTask(Task[P, R]):
    """A task of the Django app: a :class:`~litetask_async.Task` plus :meth:`delay_on_commit`."""

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> PendingTask:
        """Enqueue when the current transaction of Django's default database commits.

        The arguments are checked and serialised now (a bad call raises here); the task is
        stored by ``transaction.on_commit``: once, after the outermost ``atomic()`` block
        commits, and never if it rolls back. Outside a transaction it is stored at once.
        Returns a :class:`PendingTask` (its ``id`` is known at once; ``enqueued`` tells whether
        it was stored). Another database alias: ``enqueue_on_commit(task, args, kwargs, using=...)``.
        """
        return enqueue_on_commit(self, args, kwargs)


class DjangoLiteTask(LiteTask):
    """The :class:`~litetask_async.LiteTask` of a Django project, built from ``settings.LITETASK``
    (see :func:`get_app`); its tasks are :class:`DjangoTask` objects."""

    task_class = DjangoTask

    @overload
    def task(self, fn: Callable[P, R], /) -> DjangoTask[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, retries: int = 0,
        retry_backoff: float = 1.0, retry_on: tuple[type[BaseException], ...] | None = None,
        timeout: float | None = None, queue: str = "default", priority: int = 0,
        max_concurrency: int | None = None,
    ) -> Callable[[Callable[P, R]], DjangoTask[P, R]]: ...

    def task(self, fn: Callable[P, R] | None = None, /, **options: Any,
             ) -> DjangoTask[P, R] | Callable[[Callable[P, R]], DjangoTask[P, R]]:
        """As :meth:`LiteTask.task`; the task also has :meth:`DjangoTask.delay_on_commit`."""
        register: Callable[[Callable[P, R]], Task[P, R]] = super().task(**options)

        def django_register(f: Callable[P, R]) -> DjangoTask[P, R]:
            t = register(f)
            assert isinstance(t, DjangoTask)
            return t

        return django_register(fn) if fn is not None else django_register


_app: DjangoLiteTask | None = None
_lock = threading.Lock()


def get_app() -> DjangoLiteTask:
    """The project's task app, built from ``settings.LITETASK`` on first use (then always the
    same object). Also ``from litetask_async.contrib.django import app``.

    ``LITETASK`` is a dict of :class:`~litetask_async.LiteTask` arguments: ``url`` (default
    ``sqlite:///litetask.db``, relative to the current directory: give one), ``auto_migrate``,
    ``result_ttl``. A wrong setting raises ``ImproperlyConfigured``.

    In a process where Django is not set up yet (a worker's pool process importing a
    ``tasks`` module to run a plain ``def`` task), this sets it up, so tasks can use the ORM.
    """
    global _app
    if _app is None:
        with _lock:
            if _app is None:
                _app = _build_app()
        _setup_django()
    return _app


def _build_app() -> DjangoLiteTask:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    config = getattr(settings, SETTING, {})
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(
            f"settings.{SETTING} must be a dict such as {{'url': 'sqlite:///tasks.db'}}, "
            f"got {type(config).__name__}")
    known = [n for n in inspect.signature(LiteTask.__init__).parameters if n != "self"]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ImproperlyConfigured(f"settings.{SETTING} has unknown option(s) {unknown}; known: {known}")
    options = dict(config)
    url = options.pop("url", DEFAULT_URL)
    try:
        return DjangoLiteTask(url, **options)
    except (ConfigurationError, TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"settings.{SETTING}: {exc}") from exc


def _setup_django() -> None:
    from django.apps import apps as registry

    if not registry.ready and not registry.loading:
        import django

        django.setup()


def enqueue_on_commit(target: Task[Any, Any] | TaskCall[Any, Any] | str, args: Sequence[Any] = (),
                      kwargs: Mapping[str, Any] | None = None, *, using: str | None = None,
                      robust: bool = False) -> PendingTask:
    """Enqueue ``target(*args, **kwargs)`` when the transaction on Django's database ``using``
    (default: ``"default"``) commits; nothing is stored if it rolls back. Outside a transaction
    it is stored at once. Returns a :class:`PendingTask`.

    ``target``: a task (of any LiteTask app), a task with per-call options
    (``task.configure(countdown=30)``: the countdown runs from the commit), or a task name (the
    Django app enqueues it by name). The arguments are checked and serialised now.

    The enqueue is tied to Django's transaction, not part of it: the task's database (the
    ``LITETASK`` url) is written right after the commit, so a crash in between loses the task.
    ``robust=True`` (Django's ``on_commit(robust=...)``) logs a failed enqueue instead of
    raising it at the end of the ``atomic()`` block. Django's ``TestCase`` never commits: use
    ``captureOnCommitCallbacks(execute=True)`` or ``TransactionTestCase`` in tests.
    """
    from django.db import transaction

    kw = dict(kwargs or {})
    if isinstance(target, str):
        app: LiteTask = get_app()
        task = app.tasks.get(target)
        new = (task.prepare(args, kw) if task is not None
               else new_task(check_text(target, "task name"), args, kw))
    elif isinstance(target, TaskCall):
        app = target.task._app
        new = target.task.prepare(args, kw, target.options)
    elif isinstance(target, Task):
        app = target._app
        new = target.prepare(args, kw)
    else:
        raise TypeError(f"enqueue_on_commit takes a task, task.configure(...) or a task name, "
                        f"got {type(target).__name__}")
    pending = PendingTask(app, new, using)
    transaction.on_commit(pending._enqueue, using=using, robust=robust)
    return pending


def __getattr__(name: str) -> DjangoLiteTask:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
