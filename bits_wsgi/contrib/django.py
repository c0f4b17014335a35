"""Django: ``wrap(get_wsgi_application())`` in ``wsgi.py``, configured by ``settings.BITS_WSGI``.

::

    # mysite/wsgi.py
    from django.core.wsgi import get_wsgi_application
    from bits_wsgi.contrib.django import wrap

    application = wrap(get_wsgi_application())

    # mysite/settings.py
    BITS_WSGI = {"upload_dir": BASE_DIR / "uploads", "prefix": "/uploads/"}

It wraps the WSGI application, never a ``MIDDLEWARE`` entry: Django's CSRF middleware would
answer ``BITS_POST`` with 403 before any middleware of ours saw it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import directories_from_settings
from ..wsgi.middleware import BITSMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def wrap(
    application: WSGIApplication, *, setting: str = "BITS_WSGI", **options: Any
) -> BITSMiddleware:
    """``options`` override what ``settings.<setting>`` holds."""
    from django.conf import settings as django_settings

    configured = dict(getattr(django_settings, setting, None) or {})
    configured.update(options)
    return BITSMiddleware(application, directories=directories_from_settings(configured))
