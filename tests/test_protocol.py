"""The protocol core as tables: header values in, packets or BITSErrors out (PROTOCOL.md §2–§4)."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from bits_wsgi.errors import BITSError, InvalidRequest, LengthRequired
from bits_wsgi.protocol import (
    PROTOCOL_GUID,
    Ack,
    CancelSession,
    CloseSession,
    CreateSession,
    Fragment,
    FragmentRange,
    PacketType,
    Ping,
    SessionId,
    parse,
    parse_envelope,
    parse_fragment_range,
)

SID = "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}"


def headers(**values: str) -> Headers:
    return Headers([(name.replace("_", "-"), value) for name, value in values.items()])


def failure(exc_info: pytest.ExceptionInfo[BITSError]) -> tuple[int, str]:
    return exc_info.value.status, f"0x{exc_info.value.code:08X}"


# -- packet types (§2.1, D6) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Ping", PacketType.PING),
        ("PING", PacketType.PING),
        ("create-session", PacketType.CREATE_SESSION),
        ("CREATE-SESSION", PacketType.CREATE_SESSION),
        ("Fragment", PacketType.FRAGMENT),
        ("FRAGMENT", PacketType.FRAGMENT),
        ("Close-Session", PacketType.CLOSE_SESSION),
        ("cancel-session", PacketType.CANCEL_SESSION),
    ],
)
def test_packet_types_are_case_insensitive(value: str, expected: PacketType) -> None:
    assert PacketType.parse(value) is expected


@pytest.mark.parametrize("value", [None, "", "Ack", "ACK", "Upload", "Fragment, Fragment", "Pong"])
def test_invalid_packet_types_are_400(value: str | None) -> None:
    with pytest.raises(InvalidRequest) as exc:
        PacketType.parse(value)
    assert failure(exc) == (400, "0x80070057")


# -- envelope: §2.3 steps 3-7 in order -------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "status"),
    [
        # step 3 before everything else: a bad type wins over a missing length
        ({"BITS_Packet_Type": "Ack"}, 400),
        # step 4: a value over 4 KiB
        ({"BITS_Packet_Type": "Ping", "Content_Length": "0", "X_Big": "a" * 4097}, 400),
        # step 5: Content-Length missing, chunked, or not an integer
        ({"BITS_Packet_Type": "Ping"}, 411),
        ({"BITS_Packet_Type": "Ping", "Content_Length": ""}, 411),
        ({"BITS_Packet_Type": "Ping", "Content_Length": "0", "Transfer_Encoding": "chunked"}, 411),
        ({"BITS_Packet_Type": "Ping", "Content_Length": "abc"}, 400),
        ({"BITS_Packet_Type": "Ping", "Content_Length": "-1"}, 400),
        ({"BITS_Packet_Type": "Ping", "Content_Length": "+5"}, 400),
        ({"BITS_Packet_Type": "Ping", "Content_Length": "1_0"}, 400),
        # step 6: Content-Encoding
        ({"BITS_Packet_Type": "Fragment", "Content_Length": "1", "Content_Encoding": "gzip"}, 400),
        # step 7: a body on anything but a Fragment
        ({"BITS_Packet_Type": "Ping", "Content_Length": "5"}, 400),
        ({"BITS_Packet_Type": "Close-Session", "Content_Length": "1"}, 400),
    ],
)
def test_envelope_failures(given: dict[str, str], status: int) -> None:
    with pytest.raises(BITSError) as exc:
        parse_envelope(headers(**given))
    assert failure(exc) == (status, "0x80070057")


def test_header_of_exactly_4_kib_is_accepted() -> None:
    envelope = parse_envelope(
        headers(BITS_Packet_Type="Ping", Content_Length="0", X_Big="a" * 4096)
    )
    assert envelope.packet_type is PacketType.PING


def test_identity_encoding_is_accepted_on_a_fragment() -> None:
    envelope = parse_envelope(
        headers(BITS_Packet_Type="Fragment", Content_Length="10", Content_Encoding=" Identity ")
    )
    assert envelope.content_length == 10


def test_missing_length_is_411_not_400() -> None:
    with pytest.raises(LengthRequired):
        parse_envelope(headers(BITS_Packet_Type="Fragment"))


# -- Create-Session (§3.2) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocols",
    [
        PROTOCOL_GUID,
        PROTOCOL_GUID.upper(),
        PROTOCOL_GUID.strip("{}"),
        "{11111111-2222-3333-4444-555555555555} " + PROTOCOL_GUID,
        "{11111111-2222-3333-4444-555555555555}," + PROTOCOL_GUID,
        "{11111111-2222-3333-4444-555555555555} , " + PROTOCOL_GUID.upper() + " ",
    ],
)
def test_supported_protocol_lists(protocols: str) -> None:
    packet = parse(
        headers(
            BITS_Packet_Type="Create-Session",
            Content_Length="0",
            BITS_Supported_Protocols=protocols,
        )
    )
    assert isinstance(packet, CreateSession)


@pytest.mark.parametrize(
    "protocols",
    [
        None,
        "",
        "{11111111-2222-3333-4444-555555555555}",
        # MC-BUP <6>: only the first 100 entries count
        " ".join(["{11111111-2222-3333-4444-555555555555}"] * 100 + [PROTOCOL_GUID]),
    ],
)
def test_unsupported_protocol_lists_are_400(protocols: str | None) -> None:
    given = {"BITS_Packet_Type": "Create-Session", "Content_Length": "0"}
    if protocols is not None:
        given["BITS_Supported_Protocols"] = protocols
    with pytest.raises(InvalidRequest) as exc:
        parse(headers(**given))
    assert failure(exc) == (400, "0x80070057")


def test_protocol_at_position_100_is_found() -> None:
    value = " ".join(["{11111111-2222-3333-4444-555555555555}"] * 99 + [PROTOCOL_GUID])
    packet = parse(
        headers(
            BITS_Packet_Type="Create-Session", Content_Length="0", BITS_Supported_Protocols=value
        )
    )
    assert isinstance(packet, CreateSession)


# -- session packets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packet_type", "cls"), [("Close-Session", CloseSession), ("Cancel-Session", CancelSession)]
)
def test_close_and_cancel(packet_type: str, cls: type) -> None:
    packet = parse(headers(BITS_Packet_Type=packet_type, Content_Length="0", BITS_Session_Id=SID))
    assert isinstance(packet, cls)


@pytest.mark.parametrize("packet_type", ["Fragment", "Close-Session", "Cancel-Session"])
@pytest.mark.parametrize("session_id", [None, "", "   "])
def test_session_packets_need_a_session_id(packet_type: str, session_id: str | None) -> None:
    given = {"BITS_Packet_Type": packet_type, "Content_Length": "0", "Content_Range": "bytes */0"}
    if session_id is not None:
        given["BITS_Session_Id"] = session_id
    with pytest.raises(InvalidRequest) as exc:
        parse(headers(**given))
    assert failure(exc) == (400, "0x80070057")


def test_ping_ignores_a_session_id() -> None:
    packet = parse(headers(BITS_Packet_Type="Ping", Content_Length="0", BITS_Session_Id="junk"))
    assert isinstance(packet, Ping)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (SID, "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"),
        (SID.lower(), "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"),
        (SID.strip("{}"), "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"),
        (" " + SID + " ", "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"),
        ("../../etc/passwd", None),
        ("{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}, {A0FF5911-4144-45B3-BF27-27AFC8EC8A67}", None),
        ("{A0FF5911-4144-45B3-BF27-27AFC8EC8A6}", None),
        ("A0FF59114144 45B3BF2727AFC8EC8A67", None),
    ],
)
def test_normalise_session_id(raw: str, key: str | None) -> None:
    parsed = SessionId.parse(raw)
    assert (parsed.key if parsed is not None else None) == key


def test_format_session_id_is_braced_upper_case() -> None:
    parsed = SessionId.parse("a0ff5911-4144-45b3-bf27-27afc8ec8a67")
    assert parsed is not None and parsed.wire == SID == str(parsed)
    new = SessionId.new()
    assert SessionId.parse(new.wire) == new and new.key == new.key.upper()


# -- Content-Range (§4.1, §4.6) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-4891/4892", (0, 4891, 4892)),
        ("Bytes 0-0/1", (0, 0, 1)),
        ("BYTES 10-19/20", (10, 19, 20)),
        ("  bytes 5-9/100  ", (5, 9, 100)),
        ("bytes 0-9223372036854775805/9223372036854775807", (0, 2**63 - 3, 2**63 - 1)),
        # D13: the zero-length upload in its three spellings
        ("bytes 0--1/0", (0, -1, 0)),
        ("bytes */0", (0, -1, 0)),
        ("bytes 0-0/0", (0, -1, 0)),
    ],
)
def test_valid_content_ranges(value: str, expected: tuple[int, int, int]) -> None:
    parsed = parse_fragment_range(value)
    assert (parsed.first, parsed.last, parsed.total) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes",
        "items 0-1/2",
        "bytes=0-1/2",
        "bytes 0-1",
        "bytes 0-/2",
        "bytes -1/2",
        "bytes a-1/2",
        "bytes 0-1/*",
        "bytes */5",
        "bytes */*",
        "bytes 0-1/2, 2-3/4",
        "bytes 0-1/2,bytes 2-3/4",
        "bytes 5-4/10",  # L < F
        "bytes 0-10/10",  # L >= T
        "bytes 0-20/10",
        "bytes 0-0/9223372036854775808",  # 2**63
        "bytes +0-1/2",
        "bytes 0-1/+2",
        "bytes ０-1/2",  # non-ASCII digit
        "bytes 1-1/0",  # other range with total 0
        "bytes 0-1/0",
    ],
)
def test_invalid_content_ranges_are_400(value: str | None) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_fragment_range(value)
    assert failure(exc) == (400, "0x80070057")


@pytest.mark.parametrize(
    ("content_range", "length", "ok"),
    [
        ("bytes 0-9/10", "10", True),
        ("bytes 0-9/10", "9", False),
        ("bytes 0-9/10", "11", False),
        ("bytes */0", "0", True),
        ("bytes 0-0/0", "0", True),
        ("bytes 0-0/0", "1", False),
        ("bytes 0-0/1", "0", False),  # an empty body with T > 0
    ],
)
def test_content_length_must_match_the_range(content_range: str, length: str, ok: bool) -> None:
    given = headers(
        BITS_Packet_Type="Fragment",
        Content_Length=length,
        BITS_Session_Id=SID,
        Content_Range=content_range,
    )
    if ok:
        packet = parse(given)
        assert isinstance(packet, Fragment) and packet.content_length == int(length)
    else:
        with pytest.raises(InvalidRequest):
            parse(given)


def test_fragment_range_rejects_impossible_values() -> None:
    with pytest.raises(InvalidRequest):
        FragmentRange(3, 2, 10)


# -- Acks (§2.2) -----------------------------------------------------------------------------


def test_success_ack_has_no_error_headers() -> None:
    rendered = dict(Ack(received=10).headers())
    assert rendered == {
        "BITS-Packet-Type": "Ack",
        "BITS-Received-Content-Range": "10",
        "Content-Length": "0",
    }


def test_error_ack_carries_both_error_header_names() -> None:
    ack = Ack.from_error(InvalidRequest("x"))
    rendered = dict(ack.headers())
    assert ack.status_line == "400 Bad Request"
    assert rendered["BITS-Error-Code"] == rendered["BITS-Error"] == "0x80070057"
    assert rendered["BITS-Error-Context"] == "0x5"
    assert rendered["Content-Length"] == "0"


def test_error_headers_can_be_limited_to_one_name() -> None:
    rendered = dict(Ack.from_error(InvalidRequest("x")).headers(("BITS-Error",)))
    assert "BITS-Error-Code" not in rendered and rendered["BITS-Error"] == "0x80070057"


@pytest.mark.parametrize(
    ("status", "code"), [(401, "0x80190191"), (503, "0x801901F7"), (500, "0x801901F4")]
)
def test_default_hresult_is_bg_e_http_error(status: int, code: str) -> None:
    rendered = dict(Ack.from_error(BITSError(status=status)).headers())
    assert rendered["BITS-Error-Code"] == code


def test_503_carries_retry_after() -> None:
    rendered = dict(Ack.from_error(BITSError(status=503)).headers())
    assert rendered["Retry-After"] == "60"


def test_create_ack_matches_appendix_a() -> None:
    ack = Ack(protocol=PROTOCOL_GUID, session_id=SID, accept_encoding=True)
    assert ack.headers() == [
        ("BITS-Packet-Type", "Ack"),
        ("BITS-Protocol", "{7df0354d-249b-430f-820d-3d2a9bef4931}"),
        ("BITS-Session-Id", SID),
        ("Accept-Encoding", "identity"),
        ("Content-Length", "0"),
    ]
