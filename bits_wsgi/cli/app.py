"""The ``bits-wsgi`` arguments, and the WSGI application ``serve`` runs.

Imports no server engine: the engines (``_gunicorn``, ``_granian``) import this module to
rebuild the application in their workers, never the other way round.
"""

from __future__ import annotations

import argparse
import html
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from ..client import DEFAULT_FRAGMENT
from ..config import DEFAULT_SESSION_TIMEOUT
from ..wsgi.middleware import BITSMiddleware
from .auth import add_auth_arguments, with_authentication
from .events import add_event_commands, add_webhook_arguments, webhooks_from
from .options import add_backend_arguments, add_directory_options, build_backend, directory_from
from .scan import add_scan_arguments, with_scanner

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The standalone server serves uploads only; it never serves the uploaded files."""
    body = b"Not Found\n"
    start_response(
        "404 Not Found",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def front_page(prefix: str) -> WSGIApplication:
    """What a browser at ``/`` of a bare ``serve`` learns: what this server is and how to use
    it; every other path is :func:`not_found`."""
    page = _FRONT_PAGE.format(prefix=html.escape(prefix)).encode("utf-8")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return not_found(environ, start_response)
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [page]

    return app


_FRONT_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bits-wsgi: BITS upload server</title></head>
<body>
<h1>bits-wsgi: a BITS upload server</h1>
<p>This server receives files from the Background Intelligent Transfer Service of Windows
(<code>BITS_POST</code> requests) under <code>{prefix}</code>. It does not serve the files it
receives.</p>
<p>From Windows PowerShell, with this page's address in place of <code>SERVER</code>:</p>
<pre>Start-BitsTransfer -TransferType Upload -Source C:\path\to\file.dmp `
    -Destination http://SERVER{prefix}file.dmp</pre>
<p>From Linux: <code>bits-wsgi upload FILE http://SERVER{prefix}FILE</code>.
The documentation comes with bits-wsgi (its <code>docs/</code> folder, starting with
<code>quickstart.md</code>); <code>bits-wsgi serve --help</code> lists every option.</p>
</body></html>
"""


def _version() -> str:
    try:
        return importlib.metadata.version("bits-wsgi")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bits-wsgi", description="A Microsoft BITS upload server for WSGI."
    )
    parser.add_argument("--version", action="version", version=f"bits-wsgi {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve ROOT as a BITS upload directory")
    serve.add_argument("root", help="directory that receives the uploads")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    add_directory_options(serve)
    serve.add_argument(
        "--metrics-path",
        default=None,
        metavar="PATH",
        help="serve Prometheus metrics at this path, e.g. /metrics (needs bits-wsgi[metrics]; "
        "default: none)",
    )
    serve.add_argument(
        "--status-path",
        default=None,
        metavar="PATH",
        help="serve the operators' live status page at this path, e.g. /bits-status/ "
        "(default: none)",
    )
    serve.add_argument(
        "--status-user",
        action="append",
        default=[],
        metavar="NAME",
        help="with authentication, an operator who may read the status page (repeatable; "
        "default: none, so only loopback clients of a server without authentication)",
    )
    serve.add_argument(
        "--status-public",
        action="store_true",
        help="without authentication, let every client read the status page "
        "(default: loopback clients only)",
    )
    add_backend_arguments(serve)
    serve.add_argument(
        "--app",
        default=None,
        metavar="MODULE:NAME",
        help="a WSGI application to serve behind the uploads (default: a page at / saying what "
        "this server is, 404 for everything else)",
    )
    add_auth_arguments(serve)
    add_webhook_arguments(serve, required=False)
    add_scan_arguments(serve)
    serve.add_argument(
        "--server",
        choices=["builtin", "waitress", "gunicorn", "granian"],
        default=None,
        help="the HTTP server to run on: builtin keeps idle connections and arriving heads in "
        "an event loop, streams each body from its socket and drops requests under 240 "
        "bytes/s; waitress does the same with bodies spooled to temporary files, and speaks "
        "TLS; gunicorn gives each request in flight a thread; granian holds each body in "
        "memory; see docs/benchmarks.md (default: builtin, waitress with --certfile)",
    )
    serve.add_argument(
        "--certfile",
        default=None,
        metavar="FILE",
        help="serve HTTPS with this certificate (PEM, its chain after it; default: plain HTTP)",
    )
    serve.add_argument(
        "--keyfile",
        default=None,
        metavar="FILE",
        help="the certificate's private key (default: in --certfile)",
    )
    serve.add_argument(
        "--client-ca",
        default=None,
        metavar="FILE",
        help="require a client certificate signed by this authority; its subject's common "
        "name is the identity that owns the client's sessions (default: none required)",
    )
    serve.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="per worker: requests served at once (builtin starts them as requests need them; "
        "default: 512 on builtin, 8 on the others)",
    )
    serve.add_argument("--log-level", default="info", help="(default: %(default)s)")

    upload = commands.add_parser("upload", help="upload FILE to a BITS server at URL")
    upload.add_argument("file")
    upload.add_argument("url", help="http(s) URL of the destination")
    upload.add_argument(
        "--user",
        default=None,
        metavar="NAME:PASSWORD",
        help="HTTP Basic credentials for the server (default: none)",
    )
    upload.add_argument(
        "--negotiate",
        action="store_true",
        help="authenticate with Kerberos (your ticket cache, or the keytab in "
        "KRB5_CLIENT_KTNAME) once per connection, as Windows does; needs bits-wsgi[negotiate] "
        "(default: off)",
    )
    upload.add_argument(
        "--cacert",
        default=None,
        metavar="FILE",
        help="trust the certificate authorities in FILE (PEM) for https (default: the system's)",
    )
    upload.add_argument(
        "--cert",
        default=None,
        metavar="FILE",
        help="present this client certificate (PEM, with its key unless --key; default: none)",
    )
    upload.add_argument(
        "--key",
        default=None,
        metavar="FILE",
        help="the client certificate's private key (default: in --cert)",
    )
    upload.add_argument(
        "--reply-to",
        default=None,
        metavar="FILE",
        help="save an upload-reply's reply here (default: not downloaded)",
    )
    upload.add_argument(
        "--state-file",
        default=None,
        help="where progress is kept to resume on the next run (default: in ~/.cache/bits-wsgi)",
    )
    upload.add_argument(
        "--fragment-size",
        type=int,
        default=DEFAULT_FRAGMENT,
        metavar="BYTES",
        help="the first fragment's size; it doubles after successes and halves on a 413 "
        "(default: %(default)s)",
    )
    upload.add_argument(
        "--retries",
        type=int,
        default=8,
        help="attempts per packet after the first, with exponential backoff (default: %(default)s)",
    )
    upload.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="for each network operation (default: %(default)s)",
    )
    upload.add_argument(
        "--quiet",
        action="store_true",
        help="no progress, retry or resume lines; errors only (default: off)",
    )

    passwd = commands.add_parser(
        "passwd", help="set NAME's password in a users file for serve --users-file"
    )
    passwd.add_argument("file", help="the users file (created if missing)")
    passwd.add_argument("name", help="the user")

    sessions = commands.add_parser("sessions", help="list the sessions under ROOT")
    sessions.add_argument("root")
    sessions.add_argument(
        "--json", action="store_true", help="one JSON object per session (default: a table)"
    )
    sessions.add_argument(
        "--all", action="store_true", help="include closed and cancelled (default: active only)"
    )
    add_backend_arguments(sessions)

    cleanup = commands.add_parser("cleanup", help="remove expired sessions under ROOT")
    cleanup.add_argument("root")
    cleanup.add_argument(
        "--older-than",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT,
        metavar="SECONDS",
        help="idle time after which a session counts as expired (default: %(default)s)",
    )
    add_backend_arguments(cleanup)
    add_event_commands(commands)
    return parser


def build_app(args: argparse.Namespace) -> WSGIApplication:
    directory = with_scanner(directory_from(args, args.root), args)
    inner = import_app(args.app) if args.app else front_page(directory.prefix)
    metrics = None
    if args.metrics_path:
        try:
            from ..wsgi.metrics import PrometheusMetrics

            metrics = PrometheusMetrics()
        except ImportError as exc:
            raise ValueError("--metrics-path needs pip install 'bits-wsgi[metrics]'") from exc
    app: WSGIApplication = BITSMiddleware(
        inner,
        directories=[directory],
        backend=build_backend(args),
        metrics=metrics,
        metrics_path=args.metrics_path,
        status_path=args.status_path,
        status_users=args.status_user,
        status_public=args.status_public,
        webhooks=webhooks_from(args),
    )
    return with_authentication(app, args)


def import_app(spec: str) -> WSGIApplication:
    """``package.module:name`` → the WSGI application it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--app takes MODULE:NAME, got {spec!r}")
    # Modules of the current directory, as gunicorn finds them (an installed command's path
    # starts at its own folder instead).
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
        app = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load --app {spec!r}: {exc}") from exc
    if not callable(app):
        raise ValueError(f"--app {spec!r} is not a WSGI application")
    return cast("WSGIApplication", app)
