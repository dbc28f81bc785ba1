"""Settings of the example site: one app, ``reports``, whose slow work runs in litetask workers.

Two databases, both named by environment variables so that tests (and you) can point them
elsewhere:

- ``LITETASK_URL``: the task database (default: the SQLite file ``litetask.db`` next to
  manage.py; ``postgresql://user@host/db`` for PostgreSQL). The web process and every worker
  must use the same one.
- ``DJANGO_SQLITE_PATH``: Django's own database, for the ``Report`` rows (default ``db.sqlite3``
  next to manage.py).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

INSTALLED_APPS = [
    "litetask_async.contrib.django",  # reads LITETASK, imports every app's tasks.py
    "reports",
]

LITETASK = {
    "url": os.environ.get("LITETASK_URL", f"sqlite:///{BASE_DIR / 'litetask.db'}"),
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
    },
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
