"""Web dashboard and Prometheus metrics for litetask_async (the ``dashboard`` extra).

``pip install "litetask_async[dashboard]"`` installs Starlette, Jinja2, uvicorn and
prometheus-client; the core package never imports them. Use the app object's entry points::

    dash = app.dashboard(token="s3cret")         # an ASGI app: overview, tasks, workers, /metrics
    fastapi_app.mount("/tasks", dash)            # mountable under any prefix
    metrics = app.metrics_asgi()                 # Prometheus metrics alone, as an ASGI app

The dashboard reads the database on each request (it is not the worker); pages are
read-only for everyone who can reach them, actions (cancel, retry) need the token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import LiteTask

# The ASGI types, spelled out so that importing this module needs no web framework
# (structurally the same as ``starlette.types``).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INSTALL_HINT = 'pip install "litetask_async[dashboard]"'
_EXTRA_MODULES = frozenset({"starlette", "jinja2", "markupsafe", "prometheus_client", "multipart"})


class DashboardDependencyError(ImportError):
    """A library of the ``dashboard`` extra is not installed."""


def _missing(exc: ModuleNotFoundError, what: str) -> ImportError:
    root = (exc.name or "").split(".")[0]
    if root not in _EXTRA_MODULES:
        return exc
    return DashboardDependencyError(
        f"{what} needs the optional dependency {root!r}, which is not installed: "
        f"run `pip install litetask_async[dashboard]` (quoted in most shells: {INSTALL_HINT})")


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the dashboard on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may stand for any interface


def exposure_warning(host: str) -> str | None:
    """What to warn about when the dashboard listens on ``host`` beyond this machine, or None.

    Pages are readable by whoever reaches them, token or not (the token guards only the actions),
    so any address but loopback exposes the tasks' data.
    """
    if is_loopback(host):
        return None
    return (f"the dashboard listens on {host}, not loopback: anyone who can reach it reads every task's "
            "arguments, results and tracebacks (a token guards only cancel and retry); put it behind "
            "your own authentication, or listen on 127.0.0.1")


def create_dashboard(app: LiteTask, *, token: str | None = None, read_only: bool = False) -> ASGIApp:
    """The dashboard as an ASGI app (see :meth:`litetask_async.LiteTask.dashboard`)."""
    try:
        from .web import Dashboard
    except ModuleNotFoundError as exc:
        raise _missing(exc, "the litetask dashboard") from exc
    return Dashboard(app, token=token, read_only=read_only).asgi()


def create_metrics_app(app: LiteTask) -> ASGIApp:
    """Prometheus metrics as a standalone ASGI app (see :meth:`litetask_async.LiteTask.metrics_asgi`)."""
    try:
        from .metrics import metrics_app
    except ModuleNotFoundError as exc:
        raise _missing(exc, "litetask metrics") from exc
    return metrics_app(app)


__all__ = ["INSTALL_HINT", "ASGIApp", "DashboardDependencyError", "create_dashboard", "create_metrics_app",
           "exposure_warning", "is_loopback"]
