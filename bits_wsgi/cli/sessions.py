"""``bits-wsgi sessions`` and ``bits-wsgi cleanup``: what an operator sees and sweeps."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .. import paths
from ..backends import FilesystemBackend, default_backend
from ..config import UploadDirectory
from ..errors import CorruptRecord
from ..escaping import client_text
from ..protocol import SessionId
from ..server import UploadServer
from .options import build_backend


def sessions(args: argparse.Namespace) -> int:
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
            rows.append({"id": SessionId(session_id).wire, "state": "unreadable"})
            continue
        if record is None or (record.state.is_tombstone and not args.all):
            continue
        rows.append(
            {
                "id": SessionId(record.id).wire,
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


def cleanup(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.root):
        raise ValueError(f"{args.root} is not a directory")
    root = Path(args.root)
    server = UploadServer(
        UploadDirectory(upload_dir=root),
        build_backend(args) or default_backend(root),
        sweep_interval=None,
    )
    removed = server.sweep(older_than=args.older_than)
    print(f"removed {removed} expired session{'s' if removed != 1 else ''}")
    return 0
