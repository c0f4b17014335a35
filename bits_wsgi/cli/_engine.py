"""The project's own HTTP/1.1 engine for ``bits-wsgi serve``: connections wait in an event loop,
a request's body goes straight from its socket to the application.

Each worker process runs one event loop (``selectors``) that accepts connections, keeps the idle
ones, and reads request heads as they arrive; a head that is complete is handed, with its
connection, to one of the process's threads, which runs the application and reads the body from
the socket as the application asks for it: no copy of a body is held or spooled anywhere, so a
1 GiB upload costs what its fragments' reads cost. When the answer is sent the connection goes
back to the loop. A connection costs a socket and its head's bytes (at most ``MAX_HEAD``); a
thread is held only by a request whose head has arrived, and only while its body arrives at
``MIN_RATE`` or faster (PROTOCOL.md §9.3 "Slow clients", IIS's 240 bytes/s), checked once
``GRACE`` seconds have passed. A head incomplete after ``HEAD_TIMEOUT`` seconds, an idle
connection after ``IDLE_TIMEOUT``, and an answer its client does not read within
``SEND_TIMEOUT`` are dropped.

What HTTP/1.1 asks of a server that BITS never uses is answered plainly: a request with a
Transfer-Encoding (BITS packets carry a Content-Length) gets 501 and the connection closes;
``Expect: 100-continue`` is honoured; pipelined requests are served in order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING

from ._http import Connection, Request, RequestError, parse_head, respond_error
from ._workers import listen, run_workers
from ._wsgi_request import run_request

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

# A thread's first getaddrinfo (a Redis or webhook host) imports the idna codec; done at once by
# several threads of a freshly forked worker, that import has failed ("unknown encoding: idna")
# and left a request hanging. Importing it here, before any thread starts, settles it.
"".encode("idna")

log = logging.getLogger("bits_wsgi.serve")

#: The slowest a request may arrive, in bytes a second, once GRACE seconds have passed.
MIN_RATE = 240
GRACE = 10.0
#: The longest a request head may take to arrive, and the most bytes it may have.
HEAD_TIMEOUT = 30.0
MAX_HEAD = 64 * 1024
#: An idle keep-alive connection is closed after this long (IIS: 120 s).
IDLE_TIMEOUT = 120.0
#: How long a graceful stop waits for the requests already begun.
GRACEFUL_TIMEOUT = 60.0
#: How long a thread that has answered waits for its connection's next request before it hands
#: the connection back to the event loop.
LINGER = 0.05
#: Connections one worker process keeps at once; more wait in the listening socket's backlog.
CONNECTION_LIMIT = 1000


class Worker:
    """One process's event loop and threads."""

    def __init__(
        self,
        application: WSGIApplication,
        listener: socket.socket,
        *,
        threads: int,
        largest_body: int,
        connection_limit: int = CONNECTION_LIMIT,
    ) -> None:
        self.application = application
        self.listener = listener
        self.largest_body = largest_body
        self.connection_limit = connection_limit
        self.selector = selectors.DefaultSelector()
        self.waiting: dict[socket.socket, Connection] = {}  # in the loop: idle or head arriving
        self.busy = 0  # connections with a thread
        self.lock = threading.Lock()
        self.returned: list[Connection] = []
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.wake_writer.setblocking(False)
        self.wake_closed = False
        self.requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.stopping = False
        self.accepting = False
        self.max_threads = threads
        self.threads: list[threading.Thread] = []

    # --- the loop -------------------------------------------------------------------------

    def run(self, stop: list[int]) -> None:
        self.selector.register(self.wake_reader, selectors.EVENT_READ)
        self._accept_again()
        next_check = time.monotonic() + 1.0
        while not stop:
            self._turn(timeout=1.0)
            now = time.monotonic()
            if now >= next_check:
                self._drop_late(now)
                next_check = now + 1.0
        self._stop_gracefully()

    def _turn(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            if sock is self.listener:
                self._accept()
            elif sock is self.wake_reader:
                self._take_returned()
            else:
                connection = self.waiting.get(sock)  # type: ignore[call-overload]
                if connection is not None:  # not closed by an earlier event of this turn
                    self._read_head(connection)

    def _accept(self) -> None:
        for _ in range(64):
            if len(self.waiting) + self.busy >= self.connection_limit:
                self._stop_accepting()
                return
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            connection = Connection(sock, address)
            self.waiting[sock] = connection
            self.selector.register(sock, selectors.EVENT_READ)

    def _accept_again(self) -> None:
        if not self.accepting and not self.stopping:
            self.selector.register(self.listener, selectors.EVENT_READ)
            self.accepting = True

    def _stop_accepting(self) -> None:
        if self.accepting:
            self.selector.unregister(self.listener)
            self.accepting = False

    def _read_head(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.arrived(data, time.monotonic())
        self._dispatch_if_whole(connection)

    def _dispatch_if_whole(self, connection: Connection) -> None:
        try:
            head = parse_head(connection, MAX_HEAD)
        except RequestError as exc:
            self.selector.unregister(connection.sock)
            del self.waiting[connection.sock]
            self._send_error_and_close(connection, exc)
            if len(self.waiting) + self.busy < self.connection_limit:
                self._accept_again()
            return
        if head is None:
            return
        self.selector.unregister(connection.sock)
        del self.waiting[connection.sock]
        self.busy += 1
        self.requests.put(head)
        if self.busy > len(self.threads) < self.max_threads:
            # Threads are started as requests need them: each waits for its request's body at
            # the client's pace, so slow clients take threads, never the connections behind.
            thread = threading.Thread(target=self._serve_requests, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _take_returned(self) -> None:
        try:
            while self.wake_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self.lock:
            returned, self.returned = self.returned, []
        for connection in returned:
            self.busy -= 1
            if connection.closed:
                continue
            if self.stopping and not connection.buffer:
                self._close(connection)
                continue
            self.waiting[connection.sock] = connection
            self.selector.register(connection.sock, selectors.EVENT_READ)
            if connection.buffer:  # a pipelined request, already here
                self._dispatch_if_whole(connection)
        if len(self.waiting) + self.busy < self.connection_limit:
            self._accept_again()

    def _drop_late(self, now: float) -> None:
        for connection in list(self.waiting.values()):
            reason = connection.too_late(now, HEAD_TIMEOUT, IDLE_TIMEOUT, MIN_RATE, GRACE)
            if reason is not None:
                if connection.buffer:
                    log.info("dropped a slow connection from %s: %s", connection.host, reason)
                self._close(connection)

    def _close(self, connection: Connection) -> None:
        if connection.sock in self.waiting:
            self.selector.unregister(connection.sock)
            del self.waiting[connection.sock]
        connection.close()
        if len(self.waiting) + self.busy < self.connection_limit:
            self._accept_again()

    def _send_error_and_close(self, connection: Connection, error: RequestError) -> None:
        log.info("refused a request from %s: %s", connection.host, error)
        respond_error(connection, error)
        connection.close()

    def _stop_gracefully(self) -> None:
        """No new connection; requests begun finish; idle connections close."""
        self.stopping = True
        self._stop_accepting()
        deadline = time.monotonic() + GRACEFUL_TIMEOUT
        while time.monotonic() < deadline:
            for connection in list(self.waiting.values()):
                if not connection.buffer:
                    self._close(connection)
            if not self.waiting and not self.busy:
                break
            self._turn(timeout=0.2)
            self._drop_late(time.monotonic())
        for _ in self.threads:
            self.requests.put(None)
        for connection in list(self.waiting.values()):
            self._close(connection)
        self.selector.close()
        with self.lock:
            self.wake_closed = True
            self.wake_reader.close()
            self.wake_writer.close()

    # --- the threads ----------------------------------------------------------------------

    def _serve_requests(self) -> None:
        while True:
            request = self.requests.get()
            if request is None:
                return
            connection = request.connection
            keep = self._serve(request)
            while keep:
                # The connection's next request, if it comes at once (a client uploading sends
                # its next packet as soon as it has the Ack), is served here, without going
                # through the loop.
                following = self._next_request(connection)
                if following is None:
                    break
                keep = self._serve(following)
            if not keep:
                connection.close()
            with self.lock:
                # Under the lock: the loop may close the wake-up pipe as soon as it has taken
                # the last connection back, which can be before this thread gets to send.
                self.returned.append(connection)
                if not self.wake_closed:
                    # A full wake-up pipe means the loop has wake-ups waiting already.
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        self.wake_writer.send(b"\0")

    def _serve(self, request: Request) -> bool:
        """Run one request; whether its connection can take another."""
        try:
            return run_request(
                self.application,
                request,
                largest_body=self.largest_body,
                min_rate=MIN_RATE,
                grace=GRACE,
                closing=self._is_stopping,
            )
        except Exception:
            log.exception("request from %s failed", request.connection.host)
            return False

    def _is_stopping(self) -> bool:
        return self.stopping

    def _next_request(self, connection: Connection) -> Request | None:
        """The connection's next request if its head arrives whole within ``LINGER`` and no
        other request waits for a thread; None to hand the connection back to the loop."""
        if self.stopping or not self.requests.empty():
            return None
        sock = connection.sock
        deadline = time.monotonic() + LINGER
        try:
            while True:
                request = parse_head(connection, MAX_HEAD)
                if request is not None:
                    return request
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    left = deadline - time.monotonic()
                    if left <= 0 or not connection.wait(select.POLLIN, left):
                        return None
                    continue
                if not data:
                    connection.close()
                    return None
                connection.arrived(data, time.monotonic())
        except RequestError as exc:
            self._send_error_and_close(connection, exc)
        except OSError:
            connection.close()
        return None


def serve(
    application: WSGIApplication,
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    largest_body: int,
) -> None:
    """``largest_body``: the largest body the application answers (a larger Content-Length is
    refused with 413 before any of it is read)."""
    listener = listen(host, port)

    def work(stop: list[int]) -> None:
        Worker(application, listener, threads=threads, largest_body=largest_body).run(stop)

    run_workers(work, workers, GRACEFUL_TIMEOUT)
