"""The peer reference: the best-known open-source Python BITS server's design, rebuilt.

A ``http.server`` handler on ``ThreadingHTTPServer`` speaking HTTP/1.1, that reads each body
whole (``rfile.read(length)``) and writes it with one call. Fast, and its memory holds whole
fragments. Run: ``python benchmarks/peer.py ROOT PORT``.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/peer")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_BITS_POST(self) -> None:  # noqa: N802 - the method name is the protocol's
        kind = self.headers.get("BITS-Packet-Type", "")
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.send_response(200)
        self.send_header("BITS-Packet-Type", "Ack")
        if kind == "Create-Session":
            self.send_header("BITS-Session-Id", "{00000000-0000-0000-0000-000000000000}")
        elif kind == "Fragment":
            first = int(self.headers["Content-Range"].split()[1].split("-", 1)[0])
            path = ROOT / self.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, body, first)
            finally:
                os.close(fd)
            self.send_header("BITS-Received-Content-Range", str(first + len(body)))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


if __name__ == "__main__":
    ROOT.mkdir(parents=True, exist_ok=True)
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
