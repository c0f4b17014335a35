"""The ``bits-wsgi`` command: ``serve`` a directory to BITS clients, ``cleanup`` old sessions."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .auth import BasicAuth
from .config import DEFAULT_MAX_FRAGMENT_SIZE, DEFAULT_SESSION_TIMEOUT, UploadDirectory
from .middleware import BITSMiddleware
from .server import UploadServer

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bits-wsgi", description="A Microsoft BITS upload server for WSGI."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve ROOT as a BITS upload directory")
    serve.add_argument("root", help="directory that receives the uploads")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--prefix", default="/", help="URL prefix of the upload directory")
    serve.add_argument("--allow-overwrites", action="store_true")
    serve.add_argument("--max-upload-size", type=int, default=None, metavar="BYTES")
    serve.add_argument(
        "--max-fragment-size", type=int, default=DEFAULT_MAX_FRAGMENT_SIZE, metavar="BYTES"
    )
    serve.add_argument(
        "--session-timeout", type=float, default=DEFAULT_SESSION_TIMEOUT, metavar="SECONDS"
    )
    serve.add_argument(
        "--session-limit", type=int, default=50, help="sessions per identity; 0 disables"
    )
    serve.add_argument("--host-id", default=None)
    serve.add_argument("--host-id-fallback-timeout", type=int, default=86_400, metavar="SECONDS")
    serve.add_argument("--commit-on", choices=["final-fragment", "close"], default="final-fragment")
    serve.add_argument(
        "--notification-type", choices=["none", "by-reference", "by-value"], default="none"
    )
    serve.add_argument(
        "--notification-url",
        default=None,
        help="absolute http(s) URL, or a URL relative to the upload, served by --app",
    )
    serve.add_argument("--notification-timeout", type=float, default=290.0, metavar="SECONDS")
    serve.add_argument(
        "--app",
        default=None,
        metavar="MODULE:NAME",
        help="a WSGI application to serve behind the uploads (default: 404 for everything else)",
    )
    serve.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="enable HTTP Basic authentication (repeatable); use TLS in front",
    )
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--log-level", default="info")

    cleanup = commands.add_parser("cleanup", help="remove expired sessions under ROOT")
    cleanup.add_argument("root")
    cleanup.add_argument(
        "--older-than",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT,
        metavar="SECONDS",
        help="idle time after which a session counts as expired",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            return _serve(args)
        return _cleanup(args)
    except ValueError as exc:
        print(f"bits-wsgi: {exc}", file=sys.stderr)
        return 2


def build_app(args: argparse.Namespace) -> WSGIApplication:
    directory = UploadDirectory(
        upload_dir=Path(args.root),
        prefix=args.prefix,
        allow_overwrites=args.allow_overwrites,
        max_upload_size=args.max_upload_size,
        max_fragment_size=args.max_fragment_size,
        session_timeout=args.session_timeout,
        session_limit=args.session_limit or None,
        host_id=args.host_id,
        host_id_fallback_timeout=args.host_id_fallback_timeout,
        commit_on=args.commit_on,
        notification_type=args.notification_type,
        notification_url=args.notification_url,
        notification_timeout=args.notification_timeout,
    )
    inner = import_app(args.app) if args.app else not_found
    app: WSGIApplication = BITSMiddleware(inner, directories=[directory])
    if args.user:
        app = BasicAuth(app, _parse_users(args.user))
    return app


def import_app(spec: str) -> WSGIApplication:
    """``package.module:name`` → the WSGI application it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--app takes MODULE:NAME, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
        app = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load --app {spec!r}: {exc}") from exc
    if not callable(app):
        raise ValueError(f"--app {spec!r} is not a WSGI application")
    return cast("WSGIApplication", app)


def _parse_users(values: Sequence[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for value in values:
        name, sep, password = value.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"--user takes NAME:PASSWORD, got {value!r}")
        users[name] = password
    return users


def _serve(args: argparse.Namespace) -> int:
    app = build_app(args)
    try:
        from ._gunicorn import serve
    except ImportError:
        print(
            "bits-wsgi: `serve` runs on gunicorn: pip install 'bits-wsgi[serve]'", file=sys.stderr
        )
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    serve(app, bind=f"{host}:{args.port}", workers=args.workers, threads=args.threads)
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.root):
        raise ValueError(f"{args.root} is not a directory")
    server = UploadServer(UploadDirectory(upload_dir=Path(args.root)), sweep_interval=None)
    removed = server.sweep(older_than=args.older_than)
    print(f"removed {removed} expired session{'s' if removed != 1 else ''}")
    return 0
