"""UploadServer as a table, without WSGI (as h11 tests its state machine): each row is a session
record before, a packet, and the Ack and the record after (PROTOCOL.md §4.3, §6.1, §6.2).

The record is stored in a MemoryBackend with as many data bytes as it claims; the packet goes
through ``UploadServer.handle`` exactly as the middleware would hand it over.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from bits_wsgi import UploadDirectory, UploadServer
from bits_wsgi.backends import MemoryBackend
from bits_wsgi.protocol import parse
from bits_wsgi.server import RequestInfo
from bits_wsgi.session import SessionRecord, SessionState
from bits_wsgi.wsgi.body import BodyReader

from .support.clock import Clock

KEY = "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"
DATA = b"0123456789"
NOW = 1_800_000_000.0
TIMEOUT = 3600.0


@dataclass(frozen=True)
class Before:
    state: SessionState = SessionState.RECEIVING
    received: int = 0
    total: int | None = None
    committed: bool = False
    owner: str = "alice"
    idle: float = 0.0


@dataclass(frozen=True)
class Packet:
    kind: str
    content_range: str | None = None
    body: bytes = b""
    session: str = KEY
    identity: str = "alice"
    destination: str = "f.bin"

    def headers(self) -> Headers:
        headers = Headers(
            {
                "BITS-Packet-Type": self.kind,
                "BITS-Session-Id": f"{{{self.session}}}",
                "Content-Length": str(len(self.body)),
            }
        )
        if self.content_range is not None:
            headers["Content-Range"] = self.content_range
        return headers


@dataclass(frozen=True)
class After:
    status: int
    code: str = ""
    received: int | None = None
    #: the record after the packet: state, received, total, committed; None if it is gone
    record: tuple[str, int, int | None, bool] | None = field(default=None)


def fragment(first: int, last: int, total: int = 10, **kw: Any) -> Packet:
    return Packet("Fragment", f"bytes {first}-{last}/{total}", DATA[first : last + 1], **kw)


NOT_FOUND = "0x8020001F"
R, C, W = "receiving", "complete", "wait-for-close"

TABLE: list[tuple[str, Before, Packet, After]] = [
    # -- the offset table (§4.3) --
    ("first bytes", Before(), fragment(0, 2), After(200, received=3, record=(R, 3, 10, False))),
    (
        "next bytes",
        Before(received=3, total=10),
        fragment(3, 5),
        After(200, received=6, record=(R, 6, 10, False)),
    ),
    (
        "overlap: only the new bytes",
        Before(received=3, total=10),
        fragment(1, 5),
        After(200, received=6, record=(R, 6, 10, False)),
    ),
    (
        "duplicate",
        Before(received=6, total=10),
        fragment(0, 2),
        After(200, received=6, record=(R, 6, 10, False)),
    ),
    (
        "gap",
        Before(received=3, total=10),
        fragment(5, 6),
        After(416, "0x00000000", received=3, record=(R, 3, 10, False)),
    ),
    (
        "total changed",
        Before(received=3, total=10),
        fragment(3, 4, total=11),
        After(400, "0x80070057", received=3, record=(R, 3, 10, False)),
    ),
    # -- completion and final processing (§4.5, §6.2) --
    (
        "last bytes: committed, waiting for Close",
        Before(received=3, total=10),
        fragment(3, 9),
        After(200, received=10, record=(W, 10, 10, True)),
    ),
    (
        "all bytes held before any total was recorded (a crash): completion, not a duplicate",
        Before(received=10),
        fragment(0, 9),
        After(200, received=10, record=(W, 10, 10, True)),
    ),
    (
        "COMPLETE (final processing failed) and the final fragment again: it resumes",
        Before(state=SessionState.COMPLETE, received=10, total=10),
        fragment(0, 9),
        After(200, received=10, record=(W, 10, 10, True)),
    ),
    (
        "WAIT_FOR_CLOSE and the final fragment again: the stored Ack",
        Before(state=SessionState.WAIT_FOR_CLOSE, received=10, total=10, committed=True),
        fragment(0, 9),
        After(200, received=10, record=(W, 10, 10, True)),
    ),
    # -- Close and Cancel (§3.4, §3.5, §6.2) --
    (
        "Close after the commit",
        Before(state=SessionState.WAIT_FOR_CLOSE, received=10, total=10, committed=True),
        Packet("Close-Session"),
        After(200, record=("closed", 10, 10, True)),
    ),
    (
        "Close before the last byte: discarded, nothing committed",
        Before(received=3, total=10),
        Packet("Close-Session"),
        After(200, record=("closed", 3, 10, False)),
    ),
    (
        "Cancel",
        Before(received=3, total=10),
        Packet("Cancel-Session"),
        After(200, record=("cancelled", 3, 10, False)),
    ),
    # -- tombstones (§6.1 step 6, D4) --
    (
        "Close of a tombstone",
        Before(state=SessionState.CLOSED, received=10, total=10, committed=True),
        Packet("Close-Session"),
        After(200, record=("closed", 10, 10, True)),
    ),
    (
        "Cancel of a tombstone",
        Before(state=SessionState.CANCELLED, received=3, total=10),
        Packet("Cancel-Session"),
        After(200, record=("cancelled", 3, 10, False)),
    ),
    (
        "Fragment to a tombstone",
        Before(state=SessionState.CLOSED, received=10, total=10, committed=True),
        fragment(0, 9),
        After(500, NOT_FOUND, received=10, record=("closed", 10, 10, True)),
    ),
    # -- resolution (§6.1) --
    (
        "another identity: 403, nothing changes",
        Before(received=3, total=10),
        fragment(3, 5, identity="mallory"),
        After(403, "0x80070005", record=(R, 3, 10, False)),
    ),
    (
        "another destination: 400, nothing changes",
        Before(received=3, total=10),
        fragment(3, 5, destination="g.bin"),
        After(400, "0x80070057", received=3, record=(R, 3, 10, False)),
    ),
    (
        "unknown session",
        Before(),
        fragment(0, 2, session="C85B4E0A-9EB9-4114-BFA4-8A43B4710091"),
        After(500, NOT_FOUND, record=(R, 0, None, False)),  # the stored one is untouched
    ),
    (
        "idle past the timeout: expired and deleted, no tombstone",
        Before(received=3, total=10, idle=TIMEOUT + 61),
        fragment(3, 5),
        After(500, NOT_FOUND, record=None),
    ),
]


def run(tmp_path: Path, before: Before, packet: Packet) -> tuple[Any, MemoryBackend]:
    backend = MemoryBackend()
    record = SessionRecord(
        id=KEY,
        owner=before.owner,
        destination="f.bin",
        url="http://h/f.bin",
        state=before.state,
        created=NOW - before.idle,
        last_activity=NOW - before.idle,
        received=before.received,
        total=before.total,
        committed=before.committed,
    )
    backend.create(replace(record))
    if before.received:
        backend.write(KEY, 0, [DATA[: before.received]])
    backend.save(record)
    directory = UploadDirectory(upload_dir=tmp_path, session_timeout=TIMEOUT)
    server = UploadServer(directory, backend, clock=Clock(NOW), sweep_interval=None)
    request = RequestInfo(identity=packet.identity, destination=packet.destination, url="")
    body = BodyReader(_reader(packet.body), len(packet.body))
    return server.handle(parse(packet.headers()), request, body), backend


def _reader(data: bytes) -> Any:
    position = 0

    def read(count: int) -> bytes:
        nonlocal position
        chunk = data[position : position + count]
        position += len(chunk)
        return chunk

    return read


@pytest.mark.parametrize(
    ("before", "packet", "after"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_record_and_packet_give_ack_and_record(
    tmp_path: Path, before: Before, packet: Packet, after: After
) -> None:
    ack, backend = run(tmp_path, before, packet)
    assert (ack.status, ack.wire_error_code(), ack.received) == (
        after.status,
        after.code,
        after.received,
    )
    stored = backend.load(KEY)
    if after.record is None:
        assert stored is None
    else:
        assert stored is not None
        assert (stored.state.value, stored.received, stored.total, stored.committed) == after.record
    committed = tmp_path / "f.bin"
    if after.record is not None and after.record[3] and not before.committed:
        assert committed.read_bytes() == DATA  # committed by this very packet
