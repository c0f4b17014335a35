"""``bits-wsgi serve``: the upload server on an embedded HTTP server (gunicorn, granian or
waitress)."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from .app import build_app
from .options import directory_from


def serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
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
    if args.server == "waitress":
        try:
            from ._waitress import serve as serve_waitress
        except ImportError:
            print(
                "bits-wsgi: --server waitress needs waitress: pip install waitress", file=sys.stderr
            )
            return 2
        serve_waitress(
            app,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            largest_body=directory_from(args, args.root).discard_limit,
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
