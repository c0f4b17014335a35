"""The server's answers as the client reads them, and how Windows classifies them (§5.2)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UploadError

SESSION_NOT_FOUND = "0x8020001F"


@dataclass
class ReceivedAck:
    """An answer of the server, as the client reads it."""

    status: int
    headers: dict[str, str]

    def get(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def received(self) -> int | None:
        """The Ack's offset; a value that is not ASCII digits is the server's protocol error."""
        value = self.get("BITS-Received-Content-Range")
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()):
            raise UploadError(f"invalid BITS-Received-Content-Range {value[:40]!r}")
        return int(value)

    @property
    def error(self) -> str:
        return self.get("BITS-Error-Code") or self.get("BITS-Error") or "-"


def is_transient(packet_type: str, ack: ReceivedAck) -> bool:
    """How Windows classifies an answer (PROTOCOL.md §5.2): retry later, or give up."""
    status = ack.status
    if ack.get("BITS-Packet-Type") != "Ack":  # a proxy's error page, not the server's Ack
        return status >= 500 or status in (408, 409)
    if status in (503, 504) or ack.error == "0x80070070":  # busy, or the disk may free up
        return True
    if ack.get("BITS-Error-Context") == "0x7":  # the server application failed
        if 300 <= status < 400:
            return status not in (300, 301, 302, 303, 304, 305, 307)
        if 400 <= status < 500:
            return status in (408, 409)
        return status not in (501, 505)
    closing = packet_type in ("Close-Session", "Cancel-Session")
    return closing and status >= 500 and ack.error != SESSION_NOT_FOUND
