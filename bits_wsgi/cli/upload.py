"""``bits-wsgi upload``: the BITS client from the command line, resuming across runs."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path

from ..client import ProgressPrinter, UploadClient


def upload(args: argparse.Namespace) -> int:
    user = password = None
    if args.user:
        user, sep, password = args.user.partition(":")
        if not sep:
            raise ValueError("--user takes NAME:PASSWORD")
    source = Path(args.file)
    if not source.is_file():
        raise ValueError(f"{source} is not a file")
    if args.state_file:
        state_file = Path(args.state_file)
    else:
        state_file = default_state_file(source, args.url)
        forget_abandoned(state_file.parent)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    printer = ProgressPrinter(sys.stderr)
    client = UploadClient(
        args.url,
        user=user,
        password=password,
        fragment_size=args.fragment_size,
        retries=args.retries,
        timeout=args.timeout,
        state_file=state_file,
        progress=None if args.quiet else printer,
        cafile=args.cacert,
        certfile=args.cert,
        keyfile=args.key,
        negotiate=args.negotiate,
        notice=None if args.quiet else printer.notice,
    )
    try:
        result = client.upload(source, reply_to=args.reply_to)
    except KeyboardInterrupt:
        printer.interrupted()
        raise
    print(f"uploaded {result.size} bytes to {args.url} (session {result.session_id})")
    if result.reply_path is not None:
        print(f"reply saved to {result.reply_path}")
    elif result.reply_url:
        print(f"reply available at {result.reply_url} (not downloaded: no --reply-to)")
    return 0


#: State files in the default folder untouched this long belong to uploads given up on.
ABANDONED_AFTER = 30 * 86_400


def forget_abandoned(folder: Path, now: float | None = None) -> None:
    """Remove the default folder's state files of uploads nobody resumed for 30 days."""
    now = time.time() if now is None else now
    try:
        entries = list(folder.glob("*.json"))
    except OSError:
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > ABANDONED_AFTER:
                entry.unlink()


def default_state_file(source: Path, url: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bits-wsgi"
    key = hashlib.sha256(f"{source.resolve()}\n{url}".encode()).hexdigest()[:32]
    return cache / f"{key}.json"
