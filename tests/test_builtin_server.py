"""The builtin HTTP/1.1 engine of ``bits-wsgi serve``, one worker's loop in a thread of the test,
spoken to over real loopback sockets: framing, refusals, deadlines and bounds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from bits_wsgi.cli import _engine
from bits_wsgi.cli._engine import Worker

Environ = dict[str, Any]


def echo(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answers with the body it read and what it saw of the request."""
    body = environ["wsgi.input"].read()
    seen = [f"{k}={v}" for k, v in sorted(environ.items()) if k.startswith("HTTP_")]
    start_response(
        "200 OK",
        [
            ("Content-Length", str(len(body))),
            ("X-Seen", ";".join(seen) or "-"),
            ("X-Path", environ["PATH_INFO"]),
        ],
    )
    return [body]


class Running:
    def __init__(self, app: Callable[..., Any], **options: Any) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        options.setdefault("threads", 4)
        options.setdefault("largest_body", 1 << 20)
        self.worker = Worker(app, self.listener, **options)
        self.stop: list[int] = []
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.stop.append(1)
        self.thread.join(30)
        self.listener.close()


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(app: Callable[..., Any] = echo, **options: Any) -> Running:
        server = Running(app, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


_LEFT: dict[socket.socket, bytes] = {}


def read_response(
    sock: socket.socket, *, bodyless: bool = False
) -> tuple[str, dict[str, str], bytes]:
    """One response: status line, headers (lower-case names), body by Content-Length or chunks."""
    data = _LEFT.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed after {data!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if bodyless:
        _LEFT[sock] = rest
        return lines[0], headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += sock.recv(65536)
        _LEFT[sock] = rest[length:]  # the next response's bytes, if they came with this one
        return lines[0], headers, rest[:length]
    if headers.get("transfer-encoding") == "chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            rest += sock.recv(65536)
        body, cursor = b"", 0
        while True:
            end = rest.index(b"\r\n", cursor)
            size = int(rest[cursor:end], 16)
            if size == 0:
                return lines[0], headers, body
            body += rest[end + 2 : end + 2 + size]
            cursor = end + 2 + size + 2
    while more := sock.recv(65536):  # delimited by the connection's end
        rest += more
    return lines[0], headers, rest


def closed_by_server(sock: socket.socket, wait: float = 10) -> bool:
    sock.settimeout(wait)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(running: Any) -> None:
    server = running()
    sock = server.connect()
    sock.sendall(b"BITS_POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert read_response(sock)[2] == b"abc"
    two = (
        b"BITS_POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nde"
        b"BITS_POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nf"
    )
    sock.sendall(two)
    first, second = read_response(sock), read_response(sock)
    assert (first[1]["x-path"], first[2]) == ("/b", b"de")
    assert (second[1]["x-path"], second[2]) == ("/c", b"f")


def test_a_body_split_over_many_sends_arrives_whole(running: Any) -> None:
    server = running()
    sock = server.connect()
    body = bytes(range(256)) * 4096  # 1 MiB
    sock.sendall(b"BITS_POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    for start in range(0, len(body), 100_000):
        sock.sendall(body[start : start + 100_000])
    assert read_response(sock)[2] == body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\n folded: line\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\n\r\n", "505"),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "501"),
        (b"BITS_POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", "413"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "431"),
    ],
)
def test_requests_that_cannot_be_served_are_refused_and_closed(
    running: Any, request_bytes: bytes, status: str
) -> None:
    server = running()
    sock = server.connect()
    sock.sendall(request_bytes)
    status_line, headers, _ = read_response(sock)
    assert status_line.split()[1] == status
    assert headers["connection"] == "close"
    assert closed_by_server(sock)


def test_a_header_name_with_an_underscore_never_reaches_the_application(running: Any) -> None:
    server = running()
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nBITS_Packet-Type: Fragment\r\nBITS-Session-Id: {1}\r\n\r\n")
    seen = read_response(sock)[1]["x-seen"]
    assert "HTTP_BITS_SESSION_ID={1}" in seen
    assert "HTTP_BITS_PACKET_TYPE" not in seen


def test_expect_100_continue_gets_its_interim_answer(running: Any) -> None:
    server = running()
    sock = server.connect()
    sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"data")
    assert read_response(sock)[2] == b"data"


def test_answers_without_a_length_are_chunked_or_end_the_connection(running: Any) -> None:
    def streaming(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"one ", b"", b"two"]

    server = running(streaming)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    _, headers, body = read_response(sock)
    assert (headers["transfer-encoding"], body) == ("chunked", b"one two")
    sock.sendall(b"HEAD / HTTP/1.1\r\n\r\n")  # the same connection: the chunks were framed
    status_line, headers, _ = read_response(sock, bodyless=True)
    assert status_line.endswith("200 OK") and "transfer-encoding" not in headers
    old = server.connect()
    old.sendall(b"GET / HTTP/1.0\r\n\r\n")
    _, headers, body = read_response(old)
    assert headers["connection"] == "close" and body == b"one two"


@pytest.mark.parametrize("error", [RuntimeError("broken"), PermissionError(13, "denied")])
def test_an_application_that_fails_gets_a_500_not_a_silent_close(
    running: Any, error: Exception
) -> None:
    """An OSError of the application's own (not the client's connection) is a failure too."""

    def failing(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise error

    server = running(failing)
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert read_response(sock)[0].split()[1] == "500"


def test_a_trickling_body_is_dropped_and_frees_its_thread(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "GRACE", 0.5)
    monkeypatch.setattr("bits_wsgi.cli._wsgi_request.WAIT", 0.1)
    server = running(threads=1)
    slow = server.connect()
    slow.sendall(b"BITS_POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\nab")
    assert closed_by_server(slow)  # 2 bytes in more than half a second: under 240 bytes/s
    good = server.connect()
    good.sendall(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
    assert read_response(good)[2] == b"ok"  # the one thread is free again


def test_a_trickling_head_is_dropped_by_the_loop_without_a_thread(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "HEAD_TIMEOUT", 0.5)
    server = running(threads=1)
    slow = server.connect()
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    good = server.connect()
    good.sendall(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
    assert read_response(good)[2] == b"ok"  # served while the head is still arriving
    assert closed_by_server(slow)
    assert len(server.worker.threads) == 1


def test_idle_connections_are_closed_after_the_idle_timeout(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine, "IDLE_TIMEOUT", 0.5)
    server = running()
    sock = server.connect()
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    read_response(sock)
    assert closed_by_server(sock)


def test_threads_start_as_requests_need_them_and_never_beyond_the_limit(running: Any) -> None:
    server = running(threads=3)
    waiting = []
    for _ in range(5):  # five bodies that have not arrived: each holds a thread, at most 3
        sock = server.connect()
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
        waiting.append(sock)
    deadline = time.monotonic() + 10
    while len(server.worker.threads) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(server.worker.threads) == 3
    for sock in waiting:
        sock.sendall(b"0123456789")
    assert [read_response(sock)[2] for sock in waiting] == [b"0123456789"] * 5


def test_connections_beyond_the_limit_wait_in_the_backlog(running: Any) -> None:
    server = running(connection_limit=2)
    first, second = server.connect(), server.connect()
    for sock in (first, second):
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        read_response(sock)
    third = server.connect()  # the kernel completes the handshake; the worker does not take it
    third.sendall(b"GET /third HTTP/1.1\r\n\r\n")
    third.settimeout(0.5)
    with pytest.raises(TimeoutError):
        third.recv(1)
    first.close()
    third.settimeout(10)
    assert read_response(third)[1]["x-path"] == "/third"
    assert len(server.worker.waiting) + server.worker.busy <= 2


def test_a_stop_lets_the_request_in_flight_finish_and_closes_idle_connections(
    running: Any,
) -> None:
    server = running()
    idle = server.connect()
    idle.sendall(b"GET / HTTP/1.1\r\n\r\n")
    read_response(idle)
    busy = server.connect()
    busy.sendall(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nha")
    time.sleep(0.2)
    server.stop.append(1)
    assert closed_by_server(idle)
    busy.sendall(b"lf")
    status_line, headers, body = read_response(busy)
    assert (body, headers["connection"]) == (b"half", "close")
    server.thread.join(10)
    assert not server.thread.is_alive()


def test_a_read_holds_what_has_arrived_not_the_most_a_read_may_take() -> None:
    """A slow client's read allocates the few bytes it brought: a thousand of them waiting
    must not each hold READ_MAX (256 KiB)."""
    import tracemalloc

    from bits_wsgi.cli._http import Connection, Request
    from bits_wsgi.cli._wsgi_request import READ_MAX, Body

    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        server_side.setblocking(False)
        connection = Connection(server_side, ("127.0.0.1", 1))
        request = Request(
            connection=connection,
            method="BITS_POST",
            target="/",
            version="HTTP/1.1",
            headers=[],
            content_length=1 << 20,
            keep_alive=True,
            expect_continue=False,
            started=time.monotonic(),
            head_bytes=100,
        )
        body = Body(request, min_rate=240, grace=10.0)
        client_side.sendall(b"x" * 10)
        tracemalloc.start()
        try:
            data = body.read(1 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert data == b"x" * 10
    assert peak < READ_MAX // 4, f"a 10-byte read held {peak} bytes"
