"""One request on the project's engine (``_engine.py``), in the thread that serves it: its body
read from the socket as the application asks for it, at no less than a minimum rate, and the
application's answer framed (Content-Length, chunked, or to the connection's close).
"""

from __future__ import annotations

import array
import fcntl
import logging
import select
import sys
import termios
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ._http import SEND_TIMEOUT, WAIT, Request, RequestError, respond_error

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("bits_wsgi.serve")


#: The most of a body one read takes from the socket: what a thread holds of a body at once.
READ_MAX = 256 * 1024


class TooSlow(ConnectionError):
    """The body stopped arriving at the minimum rate: the connection is dropped unanswered."""


class Body:
    """``wsgi.input``: the request's body, read from its socket as asked, no more than its
    Content-Length, and never slower than ``min_rate`` once ``grace`` has passed. A read takes
    what has arrived (at most ``READ_MAX``) and waits, holding nothing, while nothing has."""

    def __init__(self, request: Request, min_rate: int, grace: float) -> None:
        self._connection = request.connection
        self._sock = request.connection.sock
        self.remaining = request.content_length
        self._expect_continue = request.expect_continue
        self._started = request.started
        self._received = request.head_bytes + len(request.connection.buffer)
        self._min_rate, self._grace = min_rate, grace
        self.too_slow: str | None = None
        self._fd = self._sock.fileno()
        self._arrived = array.array("i", [0])

    def _recv(self, size: int) -> bytes:
        connection = self._connection
        if connection.buffer:
            data = connection.buffer[:size]
            connection.buffer = connection.buffer[size:]
            return data
        if self._expect_continue:
            self._expect_continue = False
            connection.send_all(b"HTTP/1.1 100 Continue\r\n\r\n", SEND_TIMEOUT)
        arrived = self._arrived
        while True:
            # As much as has arrived (the kernel's count), so that a slow client's read holds
            # the few bytes it brought, not READ_MAX; with none counted, a small read finds
            # the stream's end or finds nothing and waits.
            fcntl.ioctl(self._fd, termios.FIONREAD, arrived)
            try:
                data = self._sock.recv(min(size, READ_MAX, arrived[0] or 4096))
            except (BlockingIOError, InterruptedError):
                while not connection.wait(select.POLLIN, WAIT):
                    self._check_rate()
                self._check_rate()
                continue
            self._received += len(data)
            return data

    def _check_rate(self) -> None:
        elapsed = time.monotonic() - self._started
        if elapsed > self._grace and self._received < self._min_rate * elapsed:
            self.too_slow = (
                f"{self._received} bytes in {elapsed:.0f} s, under {self._min_rate} bytes/s"
            )
            raise TooSlow(self.too_slow)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, fewer when fewer have arrived (as a socket's read gives), all
        that is left without a size; b"" only at the body's end."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        size = min(size, self.remaining)
        if size <= 0:
            return b""
        data = self._recv(size)
        if not data:
            self.remaining = 0
        self.remaining -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = self.remaining if size is None or size < 0 else min(size, self.remaining)
        line = bytearray()
        while len(line) < limit:
            if not self._connection.buffer:
                more = self._recv(min(65536, self.remaining))
                if not more:
                    self.remaining = 0
                    break
                self._connection.buffer = more
            buffer = self._connection.buffer
            end = buffer.find(b"\n", 0, limit - len(line))
            take = len(buffer) if end < 0 else end + 1
            take = min(take, limit - len(line))
            line += buffer[:take]
            self._connection.buffer = buffer[take:]
            self.remaining -= take
            if end >= 0:
                break
        return bytes(line)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def run_request(
    application: WSGIApplication,
    request: Request,
    *,
    largest_body: int,
    min_rate: int,
    grace: float,
    closing: Callable[[], bool],
) -> bool:
    """Serve one request on its connection; True if the connection can take another.
    ``closing()``: the server is stopping, so the answer closes the connection."""
    connection = request.connection
    if request.content_length > largest_body:
        respond_error(connection, RequestError(413, f"a body of {request.content_length} bytes"))
        return False
    body = Body(request, min_rate, grace)
    environ = _environ(request, body)
    keep = request.keep_alive
    state: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and state.get("head_sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        state["status"], state["headers"] = status, headers
        return write

    def emit(raw: bytes) -> None:
        if body.too_slow:  # dropped: the answer is not sent
            raise TooSlow(body.too_slow)
        if not state.get("head_sent"):
            state["head_sent"] = True
            raw = b"".join(_head(state, request)) + raw
        connection.send_all(raw, SEND_TIMEOUT)

    def write(data: bytes) -> None:
        """The application's ``write`` and each item of its iterable: framed and sent."""
        if "keep" not in state:
            _framing(state, request, keep, closing)
        if data and not state["bodyless"]:
            emit(b"%x\r\n%s\r\n" % (len(data), data) if state["chunked"] else data)

    try:
        result: Iterable[bytes] = application(environ, start_response)
        try:
            for chunk in result:
                write(chunk)
            if "keep" not in state:
                _framing(state, request, keep, closing)
            if not state.get("head_sent"):
                emit(b"")
            if state["chunked"]:
                emit(b"0\r\n\r\n")
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except (ConnectionError, TimeoutError):  # the client left, stopped reading, or was too slow
        if body.too_slow:
            log.info("dropped a slow connection from %s: %s", connection.host, body.too_slow)
        return False
    except Exception:
        log.exception("the application failed on %s %s", request.method, request.target)
        if not state.get("head_sent"):
            respond_error(connection, RequestError(500, "internal error"))
        return False
    keep = keep and state.get("keep", False)
    if not keep:
        return False
    if body.remaining:  # what the application left unread arrives, at the rate, or we close
        try:
            while body.remaining:
                if not body.read(min(body.remaining, 1 << 20)):
                    return False
        except OSError:
            return False
    connection.started = None
    connection.received = len(connection.buffer)
    connection.idle_since = time.monotonic()
    if connection.buffer:
        connection.started = connection.idle_since
    return True


def _framing(
    state: dict[str, Any], request: Request, keep: bool, closing: Callable[[], bool]
) -> None:
    """Decide, once the application has started its answer, how its body is delimited:
    ``state["chunked"]``, ``state["bodyless"]`` (HEAD, 204, 304), and ``state["keep"]``:
    whether the connection survives the answer."""
    if "status" not in state:
        raise RuntimeError("the application sent a body before calling start_response")
    status = int(state["status"][:3])
    has_length = any(name.lower() == "content-length" for name, _ in state["headers"])
    bodyless = request.method == "HEAD" or status in (204, 304) or status < 200
    state["bodyless"] = bodyless
    state["chunked"] = not (has_length or bodyless) and request.version == "HTTP/1.1"
    # An HTTP/1.0 answer without a length ends when the connection closes.
    closes = any(
        name.lower() == "connection" and "close" in value.lower()
        for name, value in state["headers"]
    )
    state["keep"] = (
        keep and not closes and not closing() and (has_length or bodyless or state["chunked"])
    )


def _head(state: dict[str, Any], request: Request) -> list[bytes]:
    lines = [f"HTTP/1.1 {state['status']}\r\n".encode("latin-1")]
    for name, value in state["headers"]:
        if name.lower() == "connection":
            continue
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if state["chunked"]:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if not state["keep"]:
        lines.append(b"Connection: close\r\n")
    elif request.version == "HTTP/1.0":
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    return lines


def _environ(request: Request, body: Body) -> dict[str, Any]:
    target = request.target
    if target.startswith(("http://", "https://")):
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path, _, query = target.partition("?")
    server_host, server_port = request.connection.local_address()
    address = request.connection.address
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": str(server_host),
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": request.version,
        "REMOTE_ADDR": str(address[0]) if isinstance(address, tuple) else "",
        "REMOTE_PORT": str(address[1]) if isinstance(address, tuple) else "",
        "REQUEST_URI": request.target,
        "RAW_URI": request.target,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "bits_wsgi.connection": request.connection,
    }
    for key, value in request.environ_headers.items():
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            environ["CONTENT_LENGTH"] = value
        else:
            environ["HTTP_" + key] = value
    return environ
