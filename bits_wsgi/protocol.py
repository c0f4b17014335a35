"""The BITS upload protocol as values: packet types, typed packets, the parser and the Ack.

Pure: header values in, packets and Acks out. No I/O, no WSGI, no configuration. The rules are
those of PROTOCOL.md §2–§4; each check names its step of the §2.3 validation order.

Parsing is two steps because the destination check (§2.3 step 9) sits between them:
:func:`parse_envelope` runs steps 3–7, :func:`parse_packet` runs step 10.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from werkzeug.datastructures import Headers
from werkzeug.http import HTTP_STATUS_CODES

from .errors import BITSError, InvalidRequest, LengthRequired, http_error_hresult

#: The only upload protocol defined, in the lower-case form the server sends.
PROTOCOL_GUID = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
_PROTOCOL_KEY = PROTOCOL_GUID.strip("{}")

BITS_METHOD = "BITS_POST"

#: MC-BUP <2>: header values above 4 KiB are refused.
MAX_HEADER_VALUE = 4096
#: MC-BUP <6>: only the first 100 protocol entries are considered.
MAX_PROTOCOL_ENTRIES = 100
#: Values at or above 2**63 cannot be file offsets anywhere the client or server lives.
MAX_OFFSET = 2**63

DEFAULT_ERROR_HEADERS = ("BITS-Error-Code", "BITS-Error")


#: MC-BUP caps URLs at 2,200 characters: request targets, notification and reply URLs.
MAX_URL_LENGTH = 2200


class PacketType(enum.Enum):
    PING = "Ping"
    CREATE_SESSION = "Create-Session"
    FRAGMENT = "Fragment"
    CLOSE_SESSION = "Close-Session"
    CANCEL_SESSION = "Cancel-Session"

    @classmethod
    def parse(cls, value: str | None) -> PacketType:
        """Case-insensitive (D6); a client's ``Ack`` or anything else is invalid."""
        member = None if value is None else _PACKET_TYPES.get(value.strip().lower())
        if member is None:
            raise InvalidRequest(f"invalid BITS-Packet-Type {value!r}")
        return member

    @property
    def carries_session_id(self) -> bool:
        return self in _SESSION_PACKETS


_PACKET_TYPES = {member.value.lower(): member for member in PacketType}
_SESSION_PACKETS = frozenset(
    {PacketType.FRAGMENT, PacketType.CLOSE_SESSION, PacketType.CANCEL_SESSION}
)

_GUID_RE = re.compile(
    r"\{?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\}?", re.IGNORECASE
)


@dataclass(frozen=True, slots=True)
class SessionId:
    """A session's id: one value, with its two spellings (D12).

    ``key`` is the upper-case GUID without braces: what backends store and name their files and
    keys after. ``wire`` is the braced form the client sends and receives. Only an id the server
    made (:meth:`new`, a uuid4 from the OS CSPRNG) or a client's text that :meth:`parse` accepts
    becomes one, so no other text reaches a path or a key (PROTOCOL.md §6.1).
    """

    key: str

    @classmethod
    def new(cls) -> SessionId:
        return cls(str(uuid.uuid4()).upper())

    @classmethod
    def parse(cls, raw: str) -> SessionId | None:
        """The id a client's text names (braces optional, any case), or None if it is none."""
        match = _GUID_RE.fullmatch(raw.strip())
        return None if match is None else cls(match.group(1).upper())

    @property
    def wire(self) -> str:
        return "{" + self.key + "}"

    def __str__(self) -> str:
        return self.wire


# -- packets ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FragmentRange:
    """``Content-Range: bytes F-L/T``; the empty upload is ``first=0, last=-1, total=0``."""

    first: int
    last: int
    total: int

    def __post_init__(self) -> None:
        empty = (self.first, self.last, self.total) == (0, -1, 0)
        if not empty and not 0 <= self.first <= self.last < self.total < MAX_OFFSET:
            raise InvalidRequest(f"invalid fragment range {self}")

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}/{self.total}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """What every BITS request has, checked by :func:`parse_envelope`."""

    packet_type: PacketType
    content_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    packet_type = PacketType.PING


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSession:
    packet_type = PacketType.CREATE_SESSION
    protocols: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fragment:
    packet_type = PacketType.FRAGMENT
    #: None if the header is no GUID: an unknown session, answered after the other checks
    session_id: SessionId | None
    raw_session_id: str
    range: FragmentRange
    content_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseSession:
    packet_type = PacketType.CLOSE_SESSION
    session_id: SessionId | None
    raw_session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelSession:
    packet_type = PacketType.CANCEL_SESSION
    session_id: SessionId | None
    raw_session_id: str


Packet = Ping | CreateSession | Fragment | CloseSession | CancelSession
SessionPacket = Fragment | CloseSession | CancelSession


# -- parsing ---------------------------------------------------------------------------------


def parse_envelope(headers: Headers) -> Envelope:
    """Steps 3–7 of PROTOCOL.md §2.3, in order. Raises :class:`BITSError`."""
    packet_type = PacketType.parse(headers.get("BITS-Packet-Type"))  # 3

    for name, value in headers.items():  # 4
        if len(value) > MAX_HEADER_VALUE:
            raise InvalidRequest(f"header {name} longer than {MAX_HEADER_VALUE} bytes")

    raw_length = headers.get("Content-Length", "").strip()  # 5
    if not raw_length or "Transfer-Encoding" in headers:
        raise LengthRequired("Content-Length is required and bodies may not be chunked")
    if not (raw_length.isascii() and raw_length.isdigit()):
        raise InvalidRequest(f"Content-Length {raw_length!r} is not an integer")
    content_length = int(raw_length)

    encoding = headers.get("Content-Encoding")  # 6
    if encoding is not None and encoding.strip().lower() != "identity":
        raise InvalidRequest(f"Content-Encoding {encoding!r} is not supported")

    if packet_type is not PacketType.FRAGMENT and content_length != 0:  # 7
        raise InvalidRequest(f"{packet_type.value} must not carry a body")

    return Envelope(packet_type=packet_type, content_length=content_length)


def parse_packet(envelope: Envelope, headers: Headers) -> Packet:
    """Step 10 of PROTOCOL.md §2.3: the packet's own headers. Raises :class:`BITSError`."""
    kind = envelope.packet_type
    if kind is PacketType.PING:
        return Ping()
    if kind is PacketType.CREATE_SESSION:
        protocols = parse_protocol_list(headers.get("BITS-Supported-Protocols"))
        if _PROTOCOL_KEY not in protocols[:MAX_PROTOCOL_ENTRIES]:
            raise InvalidRequest("no supported protocol in BITS-Supported-Protocols")
        return CreateSession(protocols=protocols)

    raw = headers.get("BITS-Session-Id", "").strip()
    if not raw:
        raise InvalidRequest(f"{kind.value} without BITS-Session-Id")
    session_id = SessionId.parse(raw)
    if kind is PacketType.CLOSE_SESSION:
        return CloseSession(session_id=session_id, raw_session_id=raw)
    if kind is PacketType.CANCEL_SESSION:
        return CancelSession(session_id=session_id, raw_session_id=raw)

    fragment_range = parse_fragment_range(headers.get("Content-Range"))
    if envelope.content_length != fragment_range.length:
        raise InvalidRequest(
            f"Content-Length {envelope.content_length} does not match range {fragment_range}"
        )
    return Fragment(
        session_id=session_id,
        raw_session_id=raw,
        range=fragment_range,
        content_length=envelope.content_length,
    )


def parse(headers: Headers) -> Packet:
    """Steps 3–7 and 10 at once, for callers that map no destination in between."""
    return parse_packet(parse_envelope(headers), headers)


def parse_protocol_list(value: str | None) -> tuple[str, ...]:
    """GUIDs separated by spaces and/or commas, braces optional, any case (D6)."""
    if value is None:
        raise InvalidRequest("BITS-Supported-Protocols is required")
    return tuple(
        entry.strip("{}").lower() for entry in re.split(r"[\s,]+", value) if entry.strip("{}")
    )


# D13: the zero-length upload may be written any of these ways.
_EMPTY_RANGE_SPECS = frozenset({"0--1/0", "*/0", "0-0/0"})
_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]+)/([0-9]+)", re.ASCII)


def parse_fragment_range(value: str | None) -> FragmentRange:
    """``bytes F-L/T`` with the strict BITS rules of PROTOCOL.md §4.1: stricter than HTTP's
    ``Content-Range`` (no other unit, no ``*``, ``F <= L < T``) but for the empty forms BITS
    uses for a zero-length file."""
    if value is None:
        raise InvalidRequest("Fragment without Content-Range")
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != "bytes":
        raise InvalidRequest(f"invalid Content-Range {value!r}")
    spec = parts[1]
    if spec in _EMPTY_RANGE_SPECS:
        return FragmentRange(0, -1, 0)
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None:
        raise InvalidRequest(f"invalid Content-Range {value!r}")
    first, last, total = map(int, match.groups())
    return FragmentRange(first, last, total)


# -- Acks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """A BITS Ack. Every response to a BITS request is one, errors included (PROTOCOL.md §2.2)."""

    status: int = 200
    session_id: str | None = None
    received: int | None = None
    protocol: str | None = None
    accept_encoding: bool = False
    host_id: str | None = None
    host_id_fallback_timeout: int | None = None
    reply_url: str | None = None
    error_code: int | None = None
    error_context: int | None = None
    retry_after: int | None = None
    extra_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_error(cls, error: BITSError, *, session_id: str | None = None) -> Ack:
        return cls(
            status=error.status,
            session_id=session_id,
            received=error.received,
            error_code=error.code,
            error_context=error.context,
            retry_after=error.retry_after,
        )

    def wire_error_code(self) -> str:
        """The BITS-Error-Code this Ack sends (``0x%08X``), "" for a 200 (D1)."""
        if self.status == 200:
            return ""
        code = self.error_code if self.error_code is not None else http_error_hresult(self.status)
        return f"0x{code:08X}"

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTP_STATUS_CODES.get(self.status, 'Unknown')}"

    def headers(
        self,
        error_header_names: Iterable[str] = DEFAULT_ERROR_HEADERS,
        *,
        session_id: str | None = None,
    ) -> list[tuple[str, str]]:
        """The response headers, in the order IIS sends them where it sends them;
        ``session_id`` is sent if the Ack has none of its own (the request's, echoed: D5)."""
        out = [("BITS-Packet-Type", "Ack")]
        if self.protocol is not None:
            out.append(("BITS-Protocol", self.protocol))
        session_id = self.session_id if self.session_id is not None else session_id
        if session_id is not None:
            out.append(("BITS-Session-Id", session_id))
        if self.host_id is not None:
            out.append(("BITS-Host-Id", self.host_id))
            if self.host_id_fallback_timeout is not None:
                out.append(("BITS-Host-Id-Fallback-Timeout", str(self.host_id_fallback_timeout)))
        if self.received is not None:
            out.append(("BITS-Received-Content-Range", str(self.received)))
        if self.reply_url is not None:
            out.append(("BITS-Reply-URL", self.reply_url))
        # D1: error headers on every non-200 Ack and never on a 200.
        code = self.wire_error_code()
        if code:
            for name in error_header_names:
                out.append((name, code))
            out.append(("BITS-Error-Context", f"0x{self.error_context or 0x5:X}"))
        if self.retry_after is not None:
            out.append(("Retry-After", str(self.retry_after)))
        out.extend(self.extra_headers)
        if self.accept_encoding:
            out.append(("Accept-Encoding", "identity"))
        out.append(("Content-Length", "0"))
        return out
