"""A minimal Django project that also accepts BITS uploads under /uploads/."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Set DJANGO_SECRET_KEY in production; this default only serves the example.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    # Still on: BITS_POST never reaches it, because the middleware wraps the WSGI application.
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "django_site.urls"
WSGI_APPLICATION = "django_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Read by bits_wsgi.contrib.django.wrap() in wsgi.py: the options of one upload directory.
BITS_WSGI = {
    "upload_dir": os.environ.get("BITS_UPLOAD_DIR", "./uploads"),
    "prefix": "/uploads/",
}

# One line per BITS packet from the "bits_wsgi" logger, under runserver as under gunicorn;
# BITS_LOG_FORMAT=json makes it one JSON object per line (docs/deployment.md, "Operations").
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"()": "bits_wsgi.wsgi.log_format.JsonFormatter"}
        if os.environ.get("BITS_LOG_FORMAT", "").lower() == "json"
        else {"format": "%(asctime)s [%(levelname)s] %(name)s: %(message)s"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line"}},
    "loggers": {"bits_wsgi": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}
