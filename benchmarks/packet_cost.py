"""What a small upload costs the server itself, per record store: no HTTP, no client.

    .venv/bin/python -m benchmarks.packet_cost [--uploads 500] [--rounds 3] [--store files ...]
    strace -f -c -o trace.txt .venv/bin/python -m benchmarks.packet_cost --store sqlite \\
        --rounds 1 --uploads 200

Each upload is Create-Session, one 4 KiB Fragment (final: fsync, commit) and Close-Session,
handed to ``UploadServer.handle`` as the middleware would; ``--size`` and ``--fragment`` make it
a larger upload in several fragments. The stores alternate round by round
(A B A B ...); the median microseconds per upload of each are printed. Run it under strace to
count system calls per upload (divide by ``--uploads``; the start-up's own calls are small).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

from werkzeug.datastructures import Headers

from bits_wsgi import UploadDirectory, UploadServer
from bits_wsgi.backends import Backend, ComposedBackend, FilesystemBackend
from bits_wsgi.backends.files import DirectoryStore
from bits_wsgi.backends.filesystem import FlockLocker
from bits_wsgi.backends.sqlite import SqliteRecords
from bits_wsgi.paths import state_dir
from bits_wsgi.protocol import PROTOCOL_GUID, Ack, parse
from bits_wsgi.server import RequestInfo
from bits_wsgi.wsgi.body import BodyReader

DATA = b"x" * 4096


def files(root: Path) -> Backend:
    return FilesystemBackend(root)


def sqlite(root: Path) -> Backend:
    state = state_dir(root)
    records = SqliteRecords(state / "sessions.sqlite3")
    return ComposedBackend(
        records=records,
        blobs=DirectoryStore(state),
        locker=FlockLocker(state / "Locks", records.exists),
    )


STORES = {"files": files, "sqlite": sqlite}


def handle(server: UploadServer, headers: dict[str, str], path: str, body: bytes = b"") -> Ack:
    sent = Headers({**headers, "Content-Length": str(len(body))})
    request = RequestInfo(identity="", destination=path, url=f"http://bits.test/{path}")
    ack = server.handle(parse(sent), request, BodyReader(io.BytesIO(body).read, len(body)))
    assert ack.status == 200, (headers, ack)
    return ack


def uploads(server: UploadServer, count: int, prefix: str, size: int, fragment: int) -> float:
    block = DATA * (fragment // len(DATA)) + DATA[: fragment % len(DATA)]
    began = time.perf_counter()
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
    return (time.perf_counter() - began) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packet_cost")
    parser.add_argument("--uploads", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", action="append", choices=sorted(STORES))
    parser.add_argument("--size", type=int, default=len(DATA), help="bytes per upload")
    parser.add_argument("--fragment", type=int, default=len(DATA), help="bytes per fragment")
    args = parser.parse_args()
    stores = args.store or sorted(STORES)
    results: dict[str, list[float]] = {name: [] for name in stores}
    # Below the current directory: on the disk uploads go to, not a tmpfs.
    with tempfile.TemporaryDirectory(prefix="bits-cost-", dir=".") as scratch:
        for round_ in range(args.rounds):
            for name in stores:
                root = Path(scratch) / f"{name}-{round_}"
                root.mkdir()
                server = UploadServer(
                    UploadDirectory(upload_dir=root, session_limit=None),
                    STORES[name](root),
                    sweep_interval=None,
                )
                elapsed = uploads(server, args.uploads, "up", args.size, args.fragment)
                results[name].append(elapsed)
    for name, runs in results.items():
        print(
            f"{name}: {statistics.median(runs):.0f} µs per upload"
            f" (runs: {[round(r) for r in runs]})"
        )


if __name__ == "__main__":
    main()
