"""``python manage.py litetask_worker``: ``litetask worker`` for the project's task app.

The options are those of ``litetask worker`` (``--concurrency``, ``--queues``, ``--processes``,
``--heartbeat-interval``, ``--heartbeat-timeout``, ``--grace-period``, ``--max-rescues``,
``--poll-interval``,
``--log-level``): read from that click command, so names, defaults and checks stay the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from litetask_async.cli import WORKER_APP_PARAMS, serve_worker, setup_logging
from litetask_async.cli import worker as worker_command
from litetask_async.contrib.django import get_app
from litetask_async.exceptions import LiteTaskError
from litetask_async.worker import block_stop_signals


def worker_options() -> list[click.Option]:
    """The options of ``litetask worker`` other than those choosing the app."""
    return [p for p in worker_command.params
            if isinstance(p, click.Option) and p.name not in WORKER_APP_PARAMS]


def _converter(option: click.Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.type.convert(text, option, None)
        except click.BadParameter as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = option.type.name  # argparse names the type in its message
    return convert


class Command(BaseCommand):
    help = ("Run a litetask_async worker for the tasks of this project's apps (settings.LITETASK) "
            "until SIGTERM/SIGINT; a second signal skips the grace period.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        for option in worker_options():
            text = (option.help or "").replace("%", "%%")
            if option.default is not None:
                text = f"{text} (default: {option.default})".strip()
            if option.is_flag:
                parser.add_argument(*option.opts, dest=option.name, action="store_true", help=text)
            else:
                parser.add_argument(*option.opts, dest=option.name, default=option.default,
                                    type=_converter(option), help=text)

    def handle(self, *args: Any, **options: Any) -> None:
        block_stop_signals()  # a SIGTERM while the project's tasks are imported stops cleanly
        values = {o.name: options[o.name] for o in worker_options() if o.name is not None}
        log_level = values.pop("log_level")
        try:
            setup_logging(log_level)
            serve_worker(get_app(), **values)
        except click.ClickException as exc:
            raise CommandError(exc.format_message(), returncode=exc.exit_code) from None
        except (LiteTaskError, ValueError) as exc:
            raise CommandError(str(exc), returncode=2) from None
