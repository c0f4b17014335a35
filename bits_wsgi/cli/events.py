"""``bits-wsgi deliver`` and ``bits-wsgi events``: the outbox of completion events, delivered
beside an application and read by operators; the webhook options ``serve`` shares."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import paths
from ..backends import Backend, FilesystemBackend
from ..backends.base import Outbox, OutboxEntry
from ..escaping import client_text
from ..protocol import SessionId
from ..server.delivery import Deliverer
from ..webhooks import Webhooks
from .options import add_backend_arguments, build_backend

DEFAULT_ATTEMPTS = Webhooks.__dataclass_fields__["max_attempts"].default


def add_webhook_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--webhook",
        action="append",
        default=[],
        required=required,
        metavar="URL",
        help="POST a signed event to this URL when an upload completes, at least once, from a "
        "durable outbox (repeatable; needs --webhook-secret-file; default: none)",
    )
    parser.add_argument(
        "--webhook-secret-file",
        default=None,
        required=required,
        metavar="FILE",
        help="the HMAC-SHA256 key that signs each event, read from this file (at least 16 "
        "bytes; default: none)",
    )
    parser.add_argument(
        "--webhook-attempts",
        type=int,
        default=DEFAULT_ATTEMPTS,
        metavar="N",
        help="deliveries tried, with exponential backoff, before an event becomes a dead letter "
        "(default: %(default)s)",
    )


def webhooks_from(args: argparse.Namespace, *, deliver: bool = True) -> Webhooks | None:
    if not args.webhook:
        if args.webhook_secret_file:
            raise ValueError("--webhook-secret-file goes with --webhook")
        return None
    if not args.webhook_secret_file:
        raise ValueError("--webhook needs --webhook-secret-file")
    try:
        secret = Path(args.webhook_secret_file).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read --webhook-secret-file: {exc.strerror}") from exc
    return Webhooks(
        urls=tuple(args.webhook),
        secret=secret,
        max_attempts=args.webhook_attempts,
        deliver=deliver,
    )


def add_event_commands(commands: Any) -> None:
    deliver_parser = commands.add_parser(
        "deliver", help="deliver the completion events of ROOT's outbox to webhooks"
    )
    deliver_parser.add_argument("root")
    add_webhook_arguments(deliver_parser, required=True)
    deliver_parser.add_argument(
        "--once", action="store_true", help="deliver what is due, then exit (default: run on)"
    )
    add_backend_arguments(deliver_parser)

    events_parser = commands.add_parser(
        "events", help="list ROOT's completion events; 'events ROOT replay ID' resends one"
    )
    events_parser.add_argument("root")
    events_parser.add_argument(
        "action", nargs="*", metavar="replay ID", help="make the event ID due again at once"
    )
    events_parser.add_argument(
        "--failed", action="store_true", help="dead letters only (default: every event)"
    )
    events_parser.add_argument(
        "--json", action="store_true", help="one JSON object per event (default: a table)"
    )
    events_parser.add_argument(
        "--limit", type=int, default=100, help="newest first, at most (default: %(default)s)"
    )
    add_backend_arguments(events_parser)


def _outbox(args: argparse.Namespace) -> Outbox:
    backend: Backend | None = build_backend(args)
    if backend is None:
        if not os.path.isdir(Path(args.root) / paths.STATE_DIR_NAME):
            raise ValueError(f"{args.root} holds no sessions ({paths.STATE_DIR_NAME}/ is missing)")
        backend = FilesystemBackend(Path(args.root))
    if backend.outbox is None:
        raise ValueError("this backend keeps no outbox")
    return backend.outbox


def deliver(args: argparse.Namespace) -> int:
    webhooks = webhooks_from(args)
    assert webhooks is not None  # the parser requires --webhook
    deliverer = Deliverer(_outbox(args), webhooks)
    if args.once:
        while deliverer.deliver_due():
            pass
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"bits-wsgi: delivering events of {args.root} to {', '.join(webhooks.urls)}", flush=True)
    deliverer.run_forever(stop)
    return 0


def events(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    if args.action:
        if len(args.action) != 2 or args.action[0] != "replay":
            raise ValueError("events takes ROOT, or ROOT replay ID")
        parsed = SessionId.parse(args.action[1])  # braces optional, any case
        event_id = parsed.wire if parsed is not None else args.action[1]
        if not outbox.replay(event_id, time.time()):
            raise ValueError(f"no event {args.action[1]!r} in the outbox")
        print(f"event {event_id} is due again; a running deliverer sends it")
        return 0
    entries = outbox.entries(dead_only=args.failed, limit=args.limit)
    if args.json:
        for entry in entries:
            print(json.dumps(_row(entry)))
        return 0
    print(f"{'EVENT':40} {'STATE':9} {'TRIES':>5}  {'CREATED':20} LAST ERROR")
    for entry in entries:
        created = datetime.fromtimestamp(entry.created, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        error = client_text(entry.last_error)
        print(f"{entry.id:40} {entry.state:9} {entry.attempts:>5}  {created:20} {error}")
    return 0


def _row(entry: OutboxEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "state": entry.state,
        "attempts": entry.attempts,
        "created": entry.created,
        "when": entry.when,
        "last_error": entry.last_error,
        "delivered_to": list(entry.delivered_to),
        "event": json.loads(entry.body),
    }
