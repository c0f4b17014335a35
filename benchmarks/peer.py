"""The peer reference: the best-known open-source Python BITS server's design, rebuilt.

A ``http.server`` handler on ``ThreadingHTTPServer`` speaking HTTP/1.1, that reads each body
whole (``rfile.read(length)``) and writes it with one call. Fast, and its memory holds whole
fragments. Run: ``python benchmarks/peer.py ROOT PORT``.

``python benchmarks/peer.py ROOT PORT durable``: the same design made as durable as PROTOCOL.md
§10.2 asks and no more (the bytes in a file of their own, fsynced with the last byte, linked to
the destination, the destination's folder fsynced): what durability costs the peer's own design,
the ceiling of any durable server measured against the peer.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.durable import link_durably  # noqa: E402 - run as a script

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/peer")
DURABLE = sys.argv[3:] == ["durable"]


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
            spec = self.headers["Content-Range"].split()[1]
            first = int(spec.split("-", 1)[0])
            path = destination = ROOT / self.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if DURABLE:
                path = ROOT / (self.path.strip("/").replace("/", "_") + ".part")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, body, first)
                if DURABLE and first + len(body) == int(spec.rsplit("/", 1)[1]):
                    os.fsync(fd)
                    link_durably(path, destination)
                    os.unlink(path)
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
