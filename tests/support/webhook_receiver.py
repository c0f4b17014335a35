"""A real webhook receiver on a loopback port: records every POST it gets (headers and body)
and answers with the status the test chooses; it can be stopped and started again on its port
(a receiver that is down for a while)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .ports import free_port


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/bits"
        self.status = 200
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.status
                if 200 <= status < 300:  # only what the receiver took counts as delivered
                    with receiver._changed:
                        receiver.deliveries.append(Delivery(dict(self.headers.items()), body))
                        receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads deliveries, not a log

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def wait_for(self, count: int, timeout: float = 60) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.deliveries)} of {count} deliveries arrived")
                self._changed.wait(left)
            return list(self.deliveries)


def signed_by(secret: bytes, delivery: Delivery) -> bool:
    """The receiver's own check of a delivery's signature, written from the documented rule
    (HMAC-SHA256 over the timestamp, a dot and the body), not with the package's helper."""
    timestamp = delivery.headers["BITS-Timestamp"]
    expected = hmac.new(secret, f"{timestamp}.".encode() + delivery.body, hashlib.sha256)
    return hmac.compare_digest(delivery.headers["BITS-Signature"], "v1=" + expected.hexdigest())
