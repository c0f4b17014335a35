"""The ``bits-wsgi`` command: ``serve``, ``upload``, ``sessions`` and ``cleanup``."""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from . import paths
from .auth import BasicAuth
from .backends import Backend, FilesystemBackend
from .client import DEFAULT_FRAGMENT, UploadClient, UploadError
from .config import DEFAULT_MAX_FRAGMENT_SIZE, DEFAULT_SESSION_TIMEOUT, UploadDirectory
from .errors import CorruptRecord
from .middleware import BITSMiddleware
from .observe import client_text
from .progress import ProgressPrinter
from .protocol import format_session_id
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
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=10_000,
        help="sessions open at once across all identities; 0 disables",
    )
    serve.add_argument(
        "--metrics-path",
        default=None,
        metavar="PATH",
        help="serve Prometheus metrics at this path, e.g. /metrics (needs bits-wsgi[metrics])",
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
    add_backend_arguments(serve)
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
    serve.add_argument(
        "--server",
        choices=["gunicorn", "granian"],
        default="gunicorn",
        help="the HTTP server to run on; granian is faster but see docs/benchmarks.md",
    )
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--log-level", default="info")

    upload = commands.add_parser("upload", help="upload FILE to a BITS server at URL")
    upload.add_argument("file")
    upload.add_argument("url", help="http(s) URL of the destination")
    upload.add_argument("--user", default=None, metavar="NAME:PASSWORD", help="Basic auth")
    upload.add_argument("--reply-to", default=None, metavar="FILE", help="save the reply here")
    upload.add_argument(
        "--state-file",
        default=None,
        help="where progress is kept to resume on the next run (default: in ~/.cache/bits-wsgi)",
    )
    upload.add_argument("--fragment-size", type=int, default=DEFAULT_FRAGMENT, metavar="BYTES")
    upload.add_argument("--retries", type=int, default=8, help="per packet, with backoff")
    upload.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    upload.add_argument("--quiet", action="store_true", help="no progress output")

    sessions = commands.add_parser("sessions", help="list the sessions under ROOT")
    sessions.add_argument("root")
    sessions.add_argument("--json", action="store_true", help="one JSON object per session")
    sessions.add_argument("--all", action="store_true", help="include closed and cancelled")
    add_backend_arguments(sessions)

    cleanup = commands.add_parser("cleanup", help="remove expired sessions under ROOT")
    cleanup.add_argument("root")
    cleanup.add_argument(
        "--older-than",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT,
        metavar="SECONDS",
        help="idle time after which a session counts as expired",
    )
    add_backend_arguments(cleanup)
    return parser


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="keep sessions in Redis, shared by several hosts (default: files under ROOT)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="PATH|s3://BUCKET/PREFIX",
        help="with --backend: where upload bytes live, a directory every host mounts or an S3 "
        "bucket (committed uploads then become objects below PREFIX; boto3 finds credentials "
        "and AWS_ENDPOINT_URL in the environment)",
    )


def build_backend(args: argparse.Namespace) -> Backend | None:
    """The session backend the arguments name; None means files under ROOT."""
    if args.backend is None:
        if args.data_dir is not None:
            raise ValueError("--data-dir goes with --backend")
        return None
    if not args.backend.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--backend takes a redis:// URL, got {args.backend!r}")
    if args.data_dir is None:
        raise ValueError("--backend needs --data-dir, the directory shared by the hosts")
    from .backends.redis import RedisBackend

    if args.data_dir.startswith("s3://"):
        from .backends.s3 import S3Store

        bucket, _, prefix = args.data_dir.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"--data-dir {args.data_dir!r} names no bucket")
        return RedisBackend(S3Store(bucket, prefix=prefix), url=args.backend)
    return RedisBackend(Path(args.data_dir), url=args.backend)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": lambda parsed: _serve(parsed, argv),
        "upload": _upload,
        "sessions": _sessions,
        "cleanup": _cleanup,
    }
    try:
        return commands[args.command](args)
    except ValueError as exc:
        print(f"bits-wsgi: {exc}", file=sys.stderr)
        return 2
    except UploadError as exc:
        print(f"bits-wsgi: upload failed: {exc}", file=sys.stderr)
        return 1


def build_app(args: argparse.Namespace) -> WSGIApplication:
    directory = UploadDirectory(
        upload_dir=Path(args.root),
        prefix=args.prefix,
        allow_overwrites=args.allow_overwrites,
        max_upload_size=args.max_upload_size,
        max_fragment_size=args.max_fragment_size,
        session_timeout=args.session_timeout,
        session_limit=args.session_limit or None,
        max_sessions=args.max_sessions or None,
        host_id=args.host_id,
        host_id_fallback_timeout=args.host_id_fallback_timeout,
        commit_on=args.commit_on,
        notification_type=args.notification_type,
        notification_url=args.notification_url,
        notification_timeout=args.notification_timeout,
    )
    inner = import_app(args.app) if args.app else not_found
    metrics = None
    if args.metrics_path:
        try:
            from .metrics import PrometheusMetrics

            metrics = PrometheusMetrics()
        except ImportError as exc:
            raise ValueError("--metrics-path needs pip install 'bits-wsgi[metrics]'") from exc
    app: WSGIApplication = BITSMiddleware(
        inner,
        directories=[directory],
        backend=build_backend(args),
        metrics=metrics,
        metrics_path=args.metrics_path,
    )
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


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.metrics_path and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _share_metrics_between_workers()
    app = build_app(args)  # configuration errors surface here, before any server starts
    if args.server == "granian":
        try:
            from ._granian import serve as serve_granian
        except ImportError:
            print("bits-wsgi: --server granian needs granian: pip install granian", file=sys.stderr)
            return 2
        serve_granian(
            argv, host=args.host, port=args.port, workers=args.workers, threads=args.threads
        )
        return 0
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


def _share_metrics_between_workers() -> None:
    """Every worker counts into files of one directory, and the metrics path sums them; set
    before prometheus_client is first imported, which reads it then."""
    folder = tempfile.mkdtemp(prefix="bits-wsgi-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    server_pid = os.getpid()

    def remove() -> None:
        if os.getpid() == server_pid:  # not when a worker exits
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)


def _upload(args: argparse.Namespace) -> int:
    user = password = None
    if args.user:
        user, sep, password = args.user.partition(":")
        if not sep:
            raise ValueError("--user takes NAME:PASSWORD")
    source = Path(args.file)
    if not source.is_file():
        raise ValueError(f"{source} is not a file")
    state_file = Path(args.state_file) if args.state_file else default_state_file(source, args.url)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    client = UploadClient(
        args.url,
        user=user,
        password=password,
        fragment_size=args.fragment_size,
        retries=args.retries,
        timeout=args.timeout,
        state_file=state_file,
        progress=None if args.quiet else ProgressPrinter(sys.stderr),
    )
    result = client.upload(source, reply_to=args.reply_to)
    print(f"uploaded {result.size} bytes to {args.url} (session {result.session_id})")
    if result.reply_path is not None:
        print(f"reply saved to {result.reply_path}")
    elif result.reply_url:
        print(f"reply available at {result.reply_url} (not downloaded: no --reply-to)")
    return 0


def default_state_file(source: Path, url: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bits-wsgi"
    key = hashlib.sha256(f"{source.resolve()}\n{url}".encode()).hexdigest()[:32]
    return cache / f"{key}.json"


def _sessions(args: argparse.Namespace) -> int:
    backend = build_backend(args)
    if backend is None:
        if not os.path.isdir(Path(args.root) / paths.STATE_DIR_NAME):
            raise ValueError(f"{args.root} holds no sessions ({paths.STATE_DIR_NAME}/ is missing)")
        backend = FilesystemBackend(Path(args.root))
    now = time.time()
    rows: list[dict[str, object]] = []
    for session_id in sorted(backend.session_ids()):
        try:
            record = backend.load(session_id)
        except CorruptRecord:
            rows.append({"id": format_session_id(session_id), "state": "unreadable"})
            continue
        if record is None or (record.state.is_tombstone and not args.all):
            continue
        rows.append(
            {
                "id": format_session_id(record.id),
                "owner": record.owner,
                "destination": record.destination,
                "received": record.received,
                "total": record.total,
                "state": record.state.value,
                "idle_seconds": round(max(0.0, now - record.last_activity)),
                "created": record.created,
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'SESSION':40} {'OWNER':12} {'STATE':14} {'RECEIVED':>23} {'IDLE':>9}  DESTINATION")
    for row in rows:
        total = "?" if row.get("total") is None else row["total"]
        received = f"{row.get('received', '-')}/{total}"
        idle = row.get("idle_seconds")
        idle_text = "-" if idle is None else f"{idle}s"
        # Owners and destinations are client text: escaped before they reach a terminal.
        owner = client_text(str(row.get("owner") or ""))
        print(
            f"{client_text(str(row['id']))!s:40} {owner[:12]:12} {row['state']!s:14} "
            f"{received:>23} {idle_text:>9}  "
            f"{client_text(str(row.get('destination') or ''))}"
        )
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.root):
        raise ValueError(f"{args.root} is not a directory")
    server = UploadServer(
        UploadDirectory(upload_dir=Path(args.root)),
        build_backend(args),
        sweep_interval=None,
    )
    removed = server.sweep(older_than=args.older_than)
    print(f"removed {removed} expired session{'s' if removed != 1 else ''}")
    return 0
