"""The Django app config: builds the task app from ``settings.LITETASK`` and imports the installed
apps' ``tasks`` modules, so a worker (``python manage.py litetask_worker``) knows every task."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class LiteTaskConfig(AppConfig):
    """``"litetask_async.contrib.django"`` in ``INSTALLED_APPS``."""

    name = "litetask_async.contrib.django"
    label = "litetask"
    verbose_name = "litetask_async"

    def ready(self) -> None:
        from . import get_app

        get_app()  # a bad LITETASK setting fails the start, not the first enqueue
        autodiscover_modules("tasks")
