"""Flask: ``init_app(app)`` wraps ``app.wsgi_app`` with the settings in ``app.config["BITS_WSGI"]``.

::

    app = Flask(__name__)
    app.config["BITS_WSGI"] = {"upload_dir": "/srv/uploads", "prefix": "/uploads/"}
    bits = init_app(app)

    @bits.events.on_upload_complete
    def uploaded(event): ...

``BITS_WSGI`` holds the options of one upload directory, or ``{"directories": [{...}, ...]}``
for several (see docs/configuration.md). Flask itself is never imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import directories_from_settings
from ..wsgi.middleware import BITSMiddleware

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask, **options: Any) -> BITSMiddleware:
    """Wrap the app's WSGI callable; ``options`` override the configured settings."""
    settings = dict(app.config.get("BITS_WSGI") or {})
    settings.update(options)
    middleware = BITSMiddleware(app.wsgi_app, directories=directories_from_settings(settings))
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions["bits_wsgi"] = middleware
    return middleware
