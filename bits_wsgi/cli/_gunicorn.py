"""gunicorn, embedded for ``bits-wsgi serve``: gthread workers, HTTP/1.1 with keep-alive.

gunicorn stops gracefully on SIGTERM but quits at once on SIGINT. PROTOCOL.md §10.2 wants both
graceful (a fragment in flight completes or is discarded, never half-recorded), so SIGINT is
mapped to the SIGTERM behaviour in the arbiter and in the workers.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class GracefulThreadWorker(ThreadWorker):  # type: ignore[misc]
    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)


class _GracefulArbiter(Arbiter):  # type: ignore[misc]
    def handle_int(self) -> None:
        self.handle_term()


class EmbeddedGunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, application: WSGIApplication, options: dict[str, Any]) -> None:
        self.application = application
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApplication:
        return self.application

    def run(self) -> None:
        _GracefulArbiter(self).run()


def serve(
    application: WSGIApplication,
    *,
    bind: str,
    workers: int,
    threads: int,
    tls: dict[str, Any] | None = None,
) -> None:
    """``tls``: gunicorn's ``certfile``, ``keyfile``, ``ca_certs`` and ``cert_reqs``."""
    EmbeddedGunicorn(
        application,
        {
            **(tls or {}),
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "worker_class": f"{__name__}.GracefulThreadWorker",
            # A 13 MB fragment over a slow link, or a 290 s notification, must not kill a worker.
            "timeout": 300,
            "graceful_timeout": 60,
            # Windows keeps its connection open between packets; 2 s (the default) is too short.
            "keepalive": 30,
            "loglevel": "info",
            "accesslog": None,
            # gunicorn's control socket is one shared path per user: two servers would collide.
            "control_socket_disable": True,
        },
    ).run()
