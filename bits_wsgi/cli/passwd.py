"""``bits-wsgi passwd FILE NAME``: a user's password, hashed, in a users file for
``serve --users-file``; the password is asked for, never an argument."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

from werkzeug.security import generate_password_hash


def passwd(args: argparse.Namespace) -> int:
    name = args.name
    if not name or ":" in name or any(c.isspace() for c in name):
        raise ValueError(f"a user name without ':' or spaces, got {name!r}")
    password = _ask()
    path = Path(args.file)
    kept = []
    if path.exists():
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.partition(":")[0].strip() != name
        ]
    kept.append(f"{name}:{generate_password_hash(password)}")
    _replace(path, "\n".join(kept) + "\n")
    print(f"{path}: password of {name} set", file=sys.stderr)
    return 0


def _ask() -> str:
    """Twice at a terminal; one line from standard input otherwise (for scripts)."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise ValueError("an empty password")
    return password


def _replace(path: Path, text: str) -> None:
    """Readable by its owner only, and replaced whole: a reader sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
