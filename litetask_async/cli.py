"""The ``litetask`` command: ``litetask worker module:app [--concurrency 8]``, ``litetask migrate``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .app import LiteTask
from .exceptions import LiteTaskError


class AppImportError(LiteTaskError):
    """The ``module:app`` given on the command line cannot be loaded."""


def load_app(spec: str) -> LiteTask:
    """Import ``module:attribute`` (the current directory is importable) and return the app."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppImportError(f"expected MODULE:APP (for example 'myproject.tasks:app'), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppImportError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, LiteTask):
        raise AppImportError(f"{spec} is a {type(obj).__name__}, not a LiteTask app")
    return obj


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litetask", description="litetask_async command line")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a worker until SIGTERM/SIGINT")
    w.add_argument("app", help="the app to serve, as MODULE:APP (e.g. myproject.tasks:app)")
    w.add_argument("--concurrency", type=int, default=8, help="tasks run at once (default 8)")
    w.add_argument("--queues", default=None,
                   help="comma-separated queues to take tasks from (default: every queue)")
    w.add_argument("--processes", type=int, default=None,
                   help="process-pool size for plain def tasks (default: min(concurrency, CPUs))")
    w.add_argument("--heartbeat-interval", type=float, default=5.0)
    w.add_argument("--heartbeat-timeout", type=float, default=30.0)
    w.add_argument("--grace-period", type=float, default=30.0,
                   help="seconds running tasks get to finish on SIGTERM before they are put back")
    w.add_argument("--max-rescues", type=int, default=3,
                   help="times a task may be taken up again after its worker vanished before it fails")
    w.add_argument("--log-level", default="INFO")
    m = sub.add_parser("migrate", help="create or upgrade the database schema, then exit")
    target = m.add_mutually_exclusive_group(required=True)
    target.add_argument("--app", help="the app, as MODULE:APP")
    target.add_argument("--url", help="the broker URL, e.g. postgresql://user@host/db")
    m.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``litetask`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "migrate":
            app = LiteTask(args.url) if args.url else load_app(args.app)
            version = asyncio.run(app.migrate())
            print(f"litetask schema is at version {version}")
            return 0
        app = load_app(args.app)
        asyncio.run(app.run_worker(
            concurrency=args.concurrency, processes=args.processes,
            queues=[q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None,
            heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
            grace_period=args.grace_period, max_rescues=args.max_rescues,
        ))
    except (LiteTaskError, ValueError) as exc:
        print(f"litetask: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
