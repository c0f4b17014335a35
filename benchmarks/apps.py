"""The WSGI applications the benchmarks compare, under identical gunicorn settings.

- ``project``: ``BITSMiddleware`` in front of a 404 app, as ``bits-wsgi serve`` runs it.
- ``baseline``: only the unavoidable work of a BITS fragment: read the body in chunks,
  ``os.pwrite`` it at its offset, answer a fixed Ack. No sessions, no checks, no durability:
  the ceiling for any BITS middleware under gunicorn.
- ``baseline_fsync``: the same, and an fsync of the file with its last byte: the ceiling for a
  durable one.
- ``baseline_commit``: what PROTOCOL.md §10.2 asks of a conforming server and no more: the
  bytes go to a file of their own, which, with the last byte, is fsynced, linked to the
  destination, and the destination's folder fsynced (a destination never exists half-written).
  Still no sessions and no checks: the ceiling for a conforming server.

The upload root comes from ``$BENCH_ROOT``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bits_wsgi import BITSMiddleware
from bits_wsgi.cli import not_found

from .durable import link_durably, write_body

ROOT = Path(os.environ.get("BENCH_ROOT", "/tmp/bits-bench"))

if os.environ.get("BENCH_WITHOUT_FSYNC") == "1":
    # Diagnosis only: shows what durability costs. Never how the project runs.
    os.fsync = lambda fd: None

project = BITSMiddleware(not_found, ROOT, session_limit=None)


def _project_redis() -> BITSMiddleware:
    from bits_wsgi.backends.redis import RedisBackend

    backend = RedisBackend(ROOT / "shared", url=os.environ["BENCH_REDIS_URL"])
    return BITSMiddleware(not_found, ROOT, session_limit=None, backend=backend)


#: The same app with sessions in Redis and bytes in a (here local) shared directory.
project_redis = _project_redis() if os.environ.get("BENCH_REDIS_URL") else None


def baseline(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    return _baseline(environ, start_response, final_fsync=False)


def baseline_fsync(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The baseline with the one durability step no BITS server can skip: the file is fsynced
    when its last byte has arrived, before the final Ack (PROTOCOL.md §10.2)."""
    return _baseline(environ, start_response, final_fsync=True)


def baseline_commit(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    return _baseline(environ, start_response, final_fsync=True, commit=True)


def _baseline(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    *,
    final_fsync: bool,
    commit: bool = False,
) -> Iterable[bytes]:
    kind = environ.get("HTTP_BITS_PACKET_TYPE", "")
    headers = [("BITS-Packet-Type", "Ack"), ("Content-Length", "0")]
    if kind == "Create-Session":
        headers.append(("BITS-Session-Id", "{00000000-0000-0000-0000-000000000000}"))
    elif kind == "Fragment":
        spec = environ["HTTP_CONTENT_RANGE"].split()[1]
        first = int(spec.split("-", 1)[0])
        remaining = int(environ["CONTENT_LENGTH"])
        destination = ROOT / environ["PATH_INFO"].lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        path = _staging(destination) if commit else destination
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            offset = write_body(fd, environ["wsgi.input"].read, first, remaining)
            if final_fsync and offset == int(spec.rsplit("/", 1)[1]):
                os.fsync(fd)
                if commit:
                    _publish(path, destination)
        finally:
            os.close(fd)
        headers.append(("BITS-Received-Content-Range", str(offset)))
    start_response("200 OK", headers)
    return []


def _staging(destination: Path) -> Path:
    staging = ROOT / ".staging"
    staging.mkdir(exist_ok=True)
    return staging / destination.relative_to(ROOT).as_posix().replace("/", "_")


def _publish(staged: Path, destination: Path) -> None:
    link_durably(staged, destination)
    os.unlink(staged)
