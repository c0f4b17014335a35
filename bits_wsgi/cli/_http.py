"""HTTP/1.1 for the project's engine (``_engine.py``): a connection, and a request head parsed
from what has arrived on it (the request itself is served by ``_wsgi_request.py``).

Only what the engine needs is here: heads are parsed strictly (RFC 9112: no folded lines, no
whitespace before a colon, one Content-Length), a Transfer-Encoding is refused with 501 since
BITS never sends one, and a header name with an underscore is dropped, so that no client can pass
a header off as another one in the WSGI environment (``BITS_Packet-Type`` as
``HTTP_BITS_PACKET_TYPE``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

#: What a blocked read or send waits for before it checks the request's rate again.
WAIT = 1.0
#: How long a client has to take its answer (its TCP window closed meanwhile).
SEND_TIMEOUT = 60.0
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_REASONS = {
    500: "Internal Server Error",
    400: "Bad Request",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}


class RequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Connection:
    """A client's connection: its socket, the bytes of its next request that have come, and
    since when they have been coming."""

    # __weakref__: a connection-bound identity (Negotiate) lives as long as its connection.
    __slots__ = (
        "sock",
        "address",
        "buffer",
        "started",
        "received",
        "idle_since",
        "closed",
        "poller",
        "local",
        "__weakref__",
    )

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = address
        self.buffer = b""
        self.started: float | None = None
        self.received = 0
        self.idle_since = time.monotonic()
        self.closed = False
        self.poller: select.poll | None = None
        self.local: tuple[str, int] | None = None

    def local_address(self) -> tuple[str, int]:
        if self.local is None:
            host, port = self.sock.getsockname()[:2]
            self.local = (str(host), int(port))
        return self.local

    def wait(self, events: int, seconds: float) -> bool:
        """Whether the (non-blocking) socket became readable or writable within ``seconds``."""
        poller = self.poller
        if poller is None:
            poller = self.poller = select.poll()
        poller.register(self.sock, events)
        return bool(poller.poll(seconds * 1000))

    def send_all(self, data: bytes, seconds: float) -> None:
        """Send ``data`` whole; TimeoutError if the client takes none of it for ``seconds``."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            if not self.wait(select.POLLOUT, seconds):
                raise TimeoutError(f"the client took no data for {seconds:.0f} s")

    @property
    def host(self) -> str:
        return str(self.address[0]) if isinstance(self.address, tuple) else str(self.address)

    def arrived(self, data: bytes, now: float) -> None:
        if self.started is None:
            self.started, self.received = now, 0
        self.buffer += data
        self.received += len(data)

    def too_late(
        self, now: float, head_timeout: float, idle_timeout: float, min_rate: int, grace: float
    ) -> str | None:
        if self.started is None:
            return "idle" if now - self.idle_since > idle_timeout else None
        elapsed = now - self.started
        if elapsed > head_timeout:
            return f"request head incomplete after {elapsed:.0f} s"
        if elapsed > grace and self.received < min_rate * elapsed:
            return f"{self.received} bytes in {elapsed:.0f} s, under {min_rate} bytes/s"
        return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


@dataclass
class Request:
    connection: Connection
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    content_length: int
    keep_alive: bool
    expect_continue: bool
    started: float
    head_bytes: int
    environ_headers: dict[str, str] = field(default_factory=dict)


def parse_head(connection: Connection, max_head: int) -> Request | None:
    """The request whose head is whole in ``connection.buffer`` (its bytes taken from the
    buffer), None while it is not; :class:`RequestError` for one that cannot be served."""
    buffer = connection.buffer
    while buffer.startswith(b"\r\n"):  # RFC 9112 §2.2: empty lines before a request
        buffer = buffer[2:]
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        connection.buffer = buffer
        if len(buffer) > max_head:
            raise RequestError(431, f"request head over {max_head} bytes")
        return None
    if end > max_head:
        raise RequestError(431, f"request head over {max_head} bytes")
    head, connection.buffer = buffer[:end], buffer[end + 4 :]
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise RequestError(400, "malformed request line")
    method, target, version = (part.decode("latin-1") for part in parts)
    if not set(parts[0]) <= _TOKEN:
        raise RequestError(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise RequestError(505 if version.startswith("HTTP/") else 400, f"version {version!r}")
    headers: list[tuple[str, str]] = []
    environ_headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN:
            raise RequestError(400, "malformed header line")
        text = value.strip(b" \t").decode("latin-1")
        key = name.decode("latin-1")
        headers.append((key, text))
        if b"_" in name:
            continue
        wsgi_key = key.upper().replace("-", "_")
        previous = environ_headers.get(wsgi_key)
        environ_headers[wsgi_key] = text if previous is None else f"{previous}, {text}"
    if "TRANSFER_ENCODING" in environ_headers:
        raise RequestError(501, "a request body with a Transfer-Encoding")
    length_text = environ_headers.get("CONTENT_LENGTH", "0")
    if not length_text.isdigit() or not length_text.isascii():
        raise RequestError(400, "malformed Content-Length")
    connection_tokens = environ_headers.get("CONNECTION", "").lower()
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection_tokens
    else:
        keep_alive = "keep-alive" in connection_tokens
    started = connection.started if connection.started is not None else time.monotonic()
    request = Request(
        connection=connection,
        method=method,
        target=target,
        version=version,
        headers=headers,
        content_length=int(length_text),
        keep_alive=keep_alive,
        expect_continue=environ_headers.get("EXPECT", "").lower() == "100-continue"
        and version == "HTTP/1.1",
        started=started,
        head_bytes=end + 4,
        environ_headers=environ_headers,
    )
    connection.started = None
    connection.received = len(connection.buffer)
    return request


def respond_error(connection: Connection, error: RequestError) -> None:
    reason = _REASONS.get(error.status, "Error")
    body = f"{error}\n".encode("latin-1", "replace")
    answer = (
        f"HTTP/1.1 {error.status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body
    with contextlib.suppress(OSError):
        connection.send_all(answer, WAIT)
