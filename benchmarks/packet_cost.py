"""What a small upload costs the server itself, per record store: no HTTP, no client.

    .venv/bin/python -m benchmarks.packet_cost [--uploads 500] [--rounds 3] [--store files ...]
    strace -f -c -o trace.txt .venv/bin/python -m benchmarks.packet_cost --store files \\
        --rounds 1 --uploads 200

Each upload is Create-Session, one 4 KiB Fragment (final: fsync, commit) and Close-Session,
handed to ``UploadServer.handle`` as the middleware would; ``--size`` and ``--fragment`` make it
a larger upload in several fragments. ``--store wsgi``, ``--store wsgi-baseline-commit`` and
``--store wsgi-baseline-sessions`` send the same packets as WSGI requests, in-process, to
``BITSMiddleware``, to the conforming baseline of ``benchmarks/apps.py`` and to the durable
sessions without checks of ``benchmarks/sessions_baseline.py``: on a tmpfs (``--dir
/dev/shm``) the disk drops out and what is left is each side's own code. The stores alternate
round by round (A B A B ...); the median microseconds per upload of each are printed. Run it
under strace to count system calls per upload (divide by ``--uploads``; the start-up's own
calls are small).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from werkzeug.datastructures import Headers

from bits_wsgi import BITSMiddleware, UploadDirectory, UploadServer
from bits_wsgi.backends import Backend, ComposedBackend, FilesystemBackend
from bits_wsgi.backends.files import DirectoryStore
from bits_wsgi.backends.filesystem import FileRecords, FlockLocker
from bits_wsgi.cli import not_found
from bits_wsgi.paths import state_dir
from bits_wsgi.protocol import PROTOCOL_GUID, Ack, parse
from bits_wsgi.server import RequestInfo
from bits_wsgi.wsgi.body import BodyReader

from .inprocess import environ as wsgi_environ

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

DATA = b"x" * 4096


def files(root: Path) -> Backend:
    """The filesystem backend as it ships: SQLite records, flat data files, flock locks."""
    return FilesystemBackend(root)


def folders(root: Path) -> Backend:
    """The filesystem backend's first layout: a folder per session, a record file, markers."""
    state = state_dir(root)
    records = FileRecords(state)
    return ComposedBackend(
        records=records,
        blobs=DirectoryStore(state),
        locker=FlockLocker(state / "Locks", records.exists),
    )


STORES = {"files": files, "folders": folders}
WSGI = ("wsgi", "wsgi-baseline-commit", "wsgi-baseline-sessions")


def handle(server: UploadServer, headers: dict[str, str], path: str, body: bytes = b"") -> Ack:
    sent = Headers({**headers, "Content-Length": str(len(body))})
    request = RequestInfo(identity="", destination=path, url=f"http://bits.test/{path}")
    ack = server.handle(parse(sent), request, BodyReader(io.BytesIO(body).read, len(body)))
    assert ack.status == 200, (headers, ack)
    return ack


def uploads(
    server: UploadServer, count: int, prefix: str, size: int, fragment: int
) -> tuple[float, float]:
    """Microseconds per upload: elapsed, and CPU time of this process (user + system)."""
    block = DATA * (fragment // len(DATA)) + DATA[: fragment % len(DATA)]
    began, cpu = time.perf_counter(), time.process_time()
    for n in range(count):
        path = f"{prefix}/{n}.bin"
        created = handle(
            server,
            {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL_GUID},
            path,
        )
        assert created.session_id is not None
        session = {"BITS-Session-Id": created.session_id}
        for first in range(0, size, fragment):
            body = block[: min(fragment, size - first)]
            span = {"Content-Range": f"bytes {first}-{first + len(body) - 1}/{size}"}
            handle(server, {"BITS-Packet-Type": "Fragment", **session, **span}, path, body)
        handle(server, {"BITS-Packet-Type": "Close-Session", **session}, path)
    elapsed = (time.perf_counter() - began) / count * 1e6
    return elapsed, (time.process_time() - cpu) / count * 1e6


def wsgi_app(name: str, root: Path) -> WSGIApplication:
    if name == "wsgi":
        return BITSMiddleware(not_found, root, session_limit=None)
    if name == "wsgi-baseline-sessions":
        from .sessions_baseline import make_app

        return make_app(root)
    from . import apps

    apps.ROOT = root  # the baselines write below apps.ROOT
    return apps.baseline_commit


def wsgi_uploads(
    app: WSGIApplication, count: int, prefix: str, size: int, fragment: int
) -> tuple[float, float]:
    """As :func:`uploads`, through a WSGI application called in-process."""
    block = DATA * (fragment // len(DATA)) + DATA[: fragment % len(DATA)]
    answer: dict[str, str] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        answer.clear()
        answer.update(headers, status=status)

    def post(path: str, body: bytes = b"", **headers: str) -> None:
        environ = wsgi_environ("BITS_POST", path, body, **headers)
        for _ in app(environ, start_response):  # type: ignore[arg-type]
            pass
        assert answer["status"].startswith("200"), answer

    began, cpu = time.perf_counter(), time.process_time()
    for n in range(count):
        path = f"/{prefix}/{n}.bin"
        post(path, BITS_PACKET_TYPE="Create-Session", BITS_SUPPORTED_PROTOCOLS=PROTOCOL_GUID)
        session = answer["BITS-Session-Id"]
        for first in range(0, size, fragment):
            body = block[: min(fragment, size - first)]
            span = f"bytes {first}-{first + len(body) - 1}/{size}"
            post(
                path, body, BITS_PACKET_TYPE="Fragment", BITS_SESSION_ID=session, CONTENT_RANGE=span
            )
        post(path, BITS_PACKET_TYPE="Close-Session", BITS_SESSION_ID=session)
    elapsed = (time.perf_counter() - began) / count * 1e6
    return elapsed, (time.process_time() - cpu) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packet_cost")
    parser.add_argument("--uploads", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", action="append", choices=[*sorted(STORES), *WSGI])
    parser.add_argument("--size", type=int, default=len(DATA), help="bytes per upload")
    parser.add_argument("--fragment", type=int, default=len(DATA), help="bytes per fragment")
    parser.add_argument(
        "--dir", default=".", help="where the upload roots go (default: here; not a tmpfs)"
    )
    args = parser.parse_args()
    stores = args.store or sorted(STORES)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
    with tempfile.TemporaryDirectory(prefix="bits-cost-", dir=args.dir) as scratch:
        for round_ in range(args.rounds):
            for name in stores:
                root = Path(scratch) / f"{name}-{round_}"
                root.mkdir()
                if name in WSGI:
                    app = wsgi_app(name, root)
                    wsgi_uploads(app, 20, "warm", args.size, args.fragment)
                    results[name].append(
                        wsgi_uploads(app, args.uploads, "up", args.size, args.fragment)
                    )
                    continue
                server = UploadServer(
                    UploadDirectory(upload_dir=root, session_limit=None),
                    STORES[name](root),
                    sweep_interval=None,
                )
                uploads(server, 20, "warm", args.size, args.fragment)
                results[name].append(uploads(server, args.uploads, "up", args.size, args.fragment))
    for name, runs in results.items():
        elapsed = [wall for wall, _ in runs]
        cpu = [used for _, used in runs]
        print(
            f"{name}: {statistics.median(elapsed):.0f} µs per upload,"
            f" {statistics.median(cpu):.0f} µs of CPU"
            f" (runs: {[round(r) for r in elapsed]}, CPU {[round(r) for r in cpu]})"
        )


if __name__ == "__main__":
    main()
