"""waitress, embedded for ``bits-wsgi serve --server waitress``: a crowd of slow connections costs
sockets and small buffers, never threads.

Each worker process runs waitress's event loop, which reads request heads and bodies as they
arrive (a body over ``inbuf_overflow`` waits in a temporary file, so memory is bounded by the
connection limit, not by the crowd) and hands a request to one of the process's threads only once
it is whole. The workers share one listening socket, bound by the master, which starts a new
worker when one dies and stops them all gracefully on SIGTERM or SIGINT: no new connection is
taken, requests already begun (arriving or being handled) finish, idle connections are closed.

A request whose head is not complete after ``HEAD_TIMEOUT`` seconds, or which arrives slower
than ``MIN_RATE`` bytes a second once ``GRACE`` seconds have passed, is dropped (PROTOCOL.md §9.3
"Slow clients"; IIS drops below 240 bytes/s); waitress alone keeps any connection on which a
byte arrives now and then.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import WSGITask

from ._tls import certificate_identity
from ._workers import listen, run_workers

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger("bits_wsgi.serve")

#: The slowest a request may arrive, in bytes a second, once GRACE seconds have passed.
MIN_RATE = 240
GRACE = 10.0
#: The longest a request head may take to arrive.
HEAD_TIMEOUT = 30.0
#: An idle keep-alive connection is closed after this long (IIS: 120 s).
IDLE_TIMEOUT = 120
#: How long a graceful stop waits for the requests already begun.
GRACEFUL_TIMEOUT = 60.0
#: Bytes of a body held in memory per connection before it goes to a temporary file.
INBUF_OVERFLOW = 64 * 1024


class DeadlineChannel(HTTPChannel):  # type: ignore[misc]
    """A connection that knows when its current request began and how much of it came."""

    request_started: float | None = None
    request_bytes = 0

    def received(self, data: bytes) -> bool:
        before = self.request
        if before is None and self.request_started is None and data:
            self.request_started, self.request_bytes = time.monotonic(), 0
        self.request_bytes += len(data)
        result: bool = super().received(data)
        if self.request is None:
            self.request_started = None  # the request arrived whole: the app has it now
        elif before is not None and self.request is not before:
            self.request_started, self.request_bytes = time.monotonic(), 0  # the next one began
        return result

    def too_slow(self, now: float) -> str | None:
        started = self.request_started
        if started is None or self.request is None:
            return None
        elapsed = now - started
        if not self.request.headers_finished and elapsed > HEAD_TIMEOUT:
            return f"request head incomplete after {elapsed:.0f} s"
        if elapsed > GRACE and self.request_bytes < MIN_RATE * elapsed:
            return f"{self.request_bytes} bytes in {elapsed:.0f} s, under {MIN_RATE} bytes/s"
        return None

    def busy(self) -> bool:
        """A request is arriving, queued, being handled, or its answer is being sent."""
        return bool(self.request is not None or self.requests or self.total_outbufs_len)


class TLSTask(WSGITask):  # type: ignore[misc]
    """A request of a TLS connection: ``https``, and the client certificate's identity."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        environ["wsgi.url_scheme"] = "https"
        environ["HTTPS"] = "on"
        if self.channel.tls_identity:
            environ["REMOTE_USER"] = self.channel.tls_identity
        return environ


class TLSChannel(DeadlineChannel):
    """A connection in TLS, on waitress's non-blocking sockets: the handshake is driven by the
    event loop, a read that finds no whole record yet is no data (not a closed connection),
    and every record OpenSSL has already decrypted is read at once, since poll() cannot see it.
    A handshake still incomplete after the head timeout is dropped like a slow head."""

    task_class = TLSTask
    tls_identity: str | None = None
    _handshaken = False
    _wants_write = False

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None):
        wrapped = server.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.accepted = time.monotonic()
        super().__init__(server, wrapped, addr, adj, map)

    def _handshake(self) -> bool:
        if self._handshaken:
            return True
        self._wants_write = False
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLWantWriteError:
            self._wants_write = True
            return False
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", self.addr[0], exc)
            self.handle_close()
            return False
        self._handshaken = True
        self.tls_identity = certificate_identity(self.socket.getpeercert())
        return True

    def handle_read(self) -> None:
        if not self._handshake():
            return
        while True:
            try:
                data = self.socket.recv(self.adj.recv_bytes)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except (ssl.SSLError, OSError):
                self.handle_close()
                return
            if not data:
                self.handle_close()
                return
            self.last_activity = time.time()
            self.received(data)
            if not self.socket.pending():
                return

    def handle_write(self) -> None:
        if not self._handshaken and self.will_close:
            self.handle_close()  # dropped before its handshake: nothing to flush
        elif self._handshake():
            super().handle_write()

    def writable(self) -> bool:
        # will_close too: a drop is carried out by handle_write, also before the handshake
        return bool(
            self._wants_write or self.will_close or (self._handshaken and super().writable())
        )

    def send(self, data: bytes, do_close: bool = True) -> int:
        try:
            sent: int = self.socket.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return 0
        except (ssl.SSLError, OSError):
            if do_close:
                self.handle_close()
            return 0
        return sent

    def too_slow(self, now: float) -> str | None:
        if not self._handshaken and now - self.accepted > HEAD_TIMEOUT:
            return f"TLS handshake incomplete after {now - self.accepted:.0f} s"
        return super().too_slow(now)


class DeadlineServer(TcpWSGIServer):  # type: ignore[misc]
    channel_class = DeadlineChannel
    tls: ssl.SSLContext | None = None

    def maintenance(self, now: float) -> None:
        """Every ``cleanup_interval``: idle connections past their timeout (waitress's rule),
        and requests slower than the floor."""
        super().maintenance(now)
        self.drop_slow()

    def drop_slow(self) -> None:
        now = time.monotonic()
        for channel in list(self.active_channels.values()):
            reason = channel.too_slow(now)
            if reason is not None:
                log.info("dropped a slow connection from %s: %s", channel.addr[0], reason)
                channel.will_close = True


def serve(
    application: WSGIApplication,
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    largest_body: int,
    tls: ssl.SSLContext | None = None,
) -> None:
    """``largest_body``: the largest body the application answers (its ``discard_limit``: a
    fragment over ``max_fragment_size`` gets its 413 Ack once it has arrived); waitress refuses
    a larger one and closes the connection, before it is stored anywhere. ``tls``: every
    connection speaks TLS in this context."""
    listener = listen(host, port)
    adjustments = Adjustments(
        threads=threads,
        connection_limit=1000,
        channel_timeout=IDLE_TIMEOUT,
        cleanup_interval=1,
        inbuf_overflow=INBUF_OVERFLOW,
        max_request_body_size=largest_body,
        recv_bytes=256 * 1024,
        asyncore_use_poll=True,
        ident="bits-wsgi",
        url_scheme="https" if tls is not None else "http",
    )
    run_workers(
        lambda stop: _work(application, listener, adjustments, tls, stop),
        workers,
        GRACEFUL_TIMEOUT,
    )


def _work(
    application: WSGIApplication,
    listener: socket.socket,
    adj: Adjustments,
    tls: ssl.SSLContext | None,
    stop: list[int],
) -> None:
    sockinfo = (listener.family, listener.type, listener.proto, listener.getsockname())
    server = DeadlineServer(
        application, _sock=listener, adj=adj, bind_socket=False, sockinfo=sockinfo
    )
    if tls is not None:
        server.tls, server.channel_class = tls, TLSChannel
    connections = server._map
    while not stop:
        wasyncore.loop(timeout=1.0, use_poll=True, map=connections, count=1)
    # Graceful: no new connection; what has begun finishes; idle connections close.
    server.accepting = False
    server.del_channel()
    deadline = time.monotonic() + GRACEFUL_TIMEOUT
    while time.monotonic() < deadline:
        server.drop_slow()
        channels = list(server.active_channels.values())
        for channel in channels:
            if not channel.busy():
                channel.will_close = True
        if not channels:
            break
        wasyncore.loop(timeout=0.2, use_poll=True, map=connections, count=1)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
