"""One record per BITS packet, for the log line an operator reads and for metrics.

The log line is ``key=value`` pairs in a fixed order; a value a client chose (a header, the
destination, the user name) is written as a JSON string when it holds anything but plain
printable ASCII, so no client can forge a field or a line. The same fields go to the log
record as ``record.bits`` (a dict), for JSON log formatters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from ..escaping import client_text

log = logging.getLogger("bits_wsgi")

#: Client-chosen values are cut to this many characters in the log.
MAX_FIELD = 120


@dataclass(frozen=True, slots=True, kw_only=True)
class PacketRecord:
    remote: str
    #: the session id as the client sent it or as the Ack assigned it, "" if none
    session: str
    identity: str
    packet: str
    range: str
    destination: str
    status: int
    #: the BITS error code of an error Ack, as 0x%08X, "" for a 200
    code: str
    #: BITS-Received-Content-Range of the Ack, None where it has none
    received: int | None
    #: Content-Length of the request body
    body_bytes: int
    #: seconds from the request's arrival to its Ack
    duration: float

    def message(self) -> str:
        fields = [
            ("remote", _value(self.remote)),
            ("session", _value(self.session)),
            ("identity", _value(self.identity)),
            ("packet", _value(self.packet)),
            ("range", _value(self.range)),
            ("dest", _value(self.destination)),
            ("status", str(self.status)),
        ]
        if self.code:
            fields.append(("code", self.code))
        fields.append(("received", "-" if self.received is None else str(self.received)))
        fields.append(("bytes", str(self.body_bytes)))
        fields.append(("ms", f"{self.duration * 1000:.1f}"))
        return " ".join(f"{key}={value}" for key, value in fields)

    def log(self) -> None:
        log.info(self.message(), extra={"bits": {name: getattr(self, name) for name in _FIELDS}})


_FIELDS = tuple(field.name for field in fields(PacketRecord))


def _value(text: str) -> str:
    return client_text(text, MAX_FIELD)
