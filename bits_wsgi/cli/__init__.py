"""The ``bits-wsgi`` command: ``serve``, ``upload``, ``sessions``, ``cleanup``, ``passwd``,
``deliver`` and ``events``, one module each (the last two share ``events``); the arguments and
the application ``serve`` runs are in ``app``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..client import UploadError
from .app import build_app, build_parser, import_app, not_found
from .events import deliver, events
from .passwd import passwd
from .serve import serve
from .sessions import cleanup, sessions
from .upload import upload

__all__ = ["build_app", "build_parser", "import_app", "main", "not_found"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": lambda parsed: serve(parsed, argv),
        "upload": upload,
        "sessions": sessions,
        "cleanup": cleanup,
        "passwd": passwd,
        "deliver": deliver,
        "events": events,
    }
    try:
        return commands[args.command](args)
    except ValueError as exc:
        print(f"bits-wsgi: {exc}", file=sys.stderr)
        return 2
    except UploadError as exc:
        hint = " (the same command resumes it)" if exc.resumable else ""
        print(f"bits-wsgi: upload failed: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "upload":
            print("bits-wsgi: interrupted; the same command resumes the upload", file=sys.stderr)
        else:
            print("bits-wsgi: interrupted", file=sys.stderr)
        return 130
