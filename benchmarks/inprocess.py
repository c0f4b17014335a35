"""In-process measurements: middleware overhead, session-count scaling, cleanup rate.

    .venv/bin/python -m benchmarks.inprocess [--sessions 100000]

No HTTP here: the WSGI callables are called directly, so what is measured is our code and the
filesystem, not a server or the loopback.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bits_wsgi import BITSMiddleware, UploadDirectory, UploadServer
from bits_wsgi.backends import FilesystemBackend
from bits_wsgi.protocol import PROTOCOL_GUID
from bits_wsgi.session import SessionRecord, SessionState


def plain_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def environ(
    method: str = "GET", path: str = "/page", body: bytes = b"", **headers: str
) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1",
    }
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    return env


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    del status, headers, exc_info


def pass_through_overhead(root: Path) -> tuple[float, float]:
    """Microseconds per non-BITS request: bare app, and through the middleware."""
    wrapped = BITSMiddleware(plain_app, root)
    env = environ()
    number = 200_000

    def bare() -> None:
        plain_app(env, start_response)

    def through() -> None:
        wrapped(env, start_response)

    bare_runs = timeit.repeat(bare, number=number, repeat=7)
    through_runs = timeit.repeat(through, number=number, repeat=7)
    return (min(bare_runs) / number * 1e6, min(through_runs) / number * 1e6)


def populate(root: Path, count: int, *, owners: bool = False) -> None:
    """``count`` idle sessions, of one anonymous owner or (``owners``) each of its own."""
    backend = FilesystemBackend(root)
    now = time.time()
    for number in range(count):
        key = str(uuid.uuid4()).upper()
        backend.create(
            SessionRecord(
                id=key,
                owner=f"user{number}" if owners else "",
                destination=f"idle/{key}.bin",
                url="http://h/x",
                state=SessionState.RECEIVING,
                created=now,
                last_activity=now,
            )
        )


def fragment_latency(root: Path, fragments: int = 300, size: int = 64 * 1024) -> float:
    """Median microseconds to handle one 64 KiB fragment of a fresh session."""
    # no caps: the root holds more idle sessions than the default max_sessions on purpose
    app = BITSMiddleware(plain_app, root, session_limit=None, max_sessions=None)
    captured: dict[str, Any] = {}

    def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["headers"] = dict(headers)

    path = f"/measured/{uuid.uuid4().hex}.bin"
    app(
        environ(
            "BITS_POST",
            path,
            BITS_PACKET_TYPE="Create-Session",
            BITS_SUPPORTED_PROTOCOLS=PROTOCOL_GUID,
        ),
        keep,
    )
    session = captured["headers"]["BITS-Session-Id"]
    data = os.urandom(size)
    total = size * fragments
    timings = []
    for number in range(fragments):
        first = number * size
        env = environ(
            "BITS_POST",
            path,
            data,
            BITS_PACKET_TYPE="Fragment",
            BITS_SESSION_ID=session,
            CONTENT_RANGE=f"bytes {first}-{first + size - 1}/{total}",
        )
        began = time.perf_counter()
        app(env, keep)
        timings.append(time.perf_counter() - began)
    return statistics.median(timings) * 1e6


def create_latency(root: Path, max_sessions: int | None, creates: int = 300) -> float:
    """Median microseconds of a Create-Session, with the global cap on (never reached) or off."""
    app = BITSMiddleware(plain_app, root, session_limit=None, max_sessions=max_sessions)
    timings = []
    for _ in range(creates):
        env = environ(
            "BITS_POST",
            f"/created/{uuid.uuid4().hex}.bin",
            BITS_PACKET_TYPE="Create-Session",
            BITS_SUPPORTED_PROTOCOLS=PROTOCOL_GUID,
        )
        began = time.perf_counter()
        app(env, start_response)
        timings.append(time.perf_counter() - began)
    return statistics.median(timings) * 1e6


def cleanup_rate(root: Path, count: int) -> float:
    populate(root, count)
    server = UploadServer(
        UploadDirectory(upload_dir=root),
        FilesystemBackend(root),
        sweep_interval=None,
        clock=lambda: time.time() + 10 * 86_400,
    )
    began = time.perf_counter()
    removed = server.sweep(older_than=86_400)
    seconds = time.perf_counter() - began
    assert removed == count, (removed, count)
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as scratch:
        base = Path(scratch)
        bare, through = pass_through_overhead(base / "overhead")
        print(
            f"non-BITS request: bare app {bare:.2f} us, through the middleware {through:.2f} us,"
            f" added {through - bare:.2f} us"
        )

        few, many = base / "few", base / "many"
        populate(few, 10)
        began = time.perf_counter()
        populate(many, args.sessions)
        print(f"created {args.sessions} idle sessions in {time.perf_counter() - began:.1f} s")
        latency = {}
        for _ in range(3):  # interleaved rounds
            for name, root in (("10", few), (str(args.sessions), many)):
                latency.setdefault(name, []).append(fragment_latency(root))
        small = statistics.median(latency["10"])
        large = statistics.median(latency[str(args.sessions)])
        print(
            f"64 KiB fragment latency: {small:.0f} us with 10 sessions, {large:.0f} us with "
            f"{args.sessions} ({large / small:.2f}x)"
        )

        owners = base / "owners"
        populate(owners, args.sessions, owners=True)
        rounds: dict[str, list[float]] = {}
        for _ in range(3):  # interleaved rounds
            for name, cap in (("off", None), ("on", 10**9)):
                rounds.setdefault(name, []).append(create_latency(owners, cap))
        off, on = statistics.median(rounds["off"]), statistics.median(rounds["on"])
        print(
            f"Create-Session with {args.sessions} sessions of as many owners: {off:.0f} us "
            f"without the global cap, {on:.0f} us with it ({on / off:.2f}x)"
        )

        for count in (args.sessions // 10, args.sessions):
            rate = cleanup_rate(base / f"cleanup-{count}", count)
            print(f"cleanup of {count} expired sessions: {rate:,.0f} sessions/s")


if __name__ == "__main__":
    main()
