"""granian, embedded for ``bits-wsgi serve --server granian``.

Faster than gunicorn with this application (docs/benchmarks.md), but not the default: with
SIGINT sent to the whole process group (Ctrl-C in a terminal) while a client holds an idle
keep-alive connection, its workers do not stop on their own; ``workers_kill_timeout`` bounds
that wait.

granian starts its workers as new processes that import the application by name, so the
``serve`` arguments travel to them in an environment variable and :func:`make_app` rebuilds the
application in each worker.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granian import Granian
from granian.constants import Interfaces, SSLProtocols
from granian.log import LogLevels

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

ARGV_ENV = "BITS_WSGI_SERVE_ARGV"


def make_app() -> WSGIApplication:
    from .app import build_app, build_parser

    args = build_parser().parse_args(json.loads(os.environ[ARGV_ENV]))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return build_app(args)


def serve(
    argv: Sequence[str],
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    os.environ[ARGV_ENV] = json.dumps(list(argv))
    tls: dict[str, Any] = {}
    if certfile is not None:
        tls = {
            "ssl_cert": Path(certfile),
            "ssl_key": Path(keyfile or certfile),
            "ssl_protocol_min": SSLProtocols.tls12,  # Windows 7 speaks TLS 1.2, not 1.3
        }
    Granian(
        f"{__name__}:make_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        log_level=LogLevels.info,
        workers_kill_timeout=60,
        **tls,
    ).serve()
