"""Whatever arrives, the parser answers with a packet or a BITSError, never anything else."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from bits_wsgi import BITSMiddleware
from bits_wsgi.errors import BITSError
from bits_wsgi.protocol import PROTOCOL_GUID, Packet, parse

from ..conftest import call, fallback_app, raw_environ

header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=60,
)
numbers = st.one_of(st.integers(min_value=-5, max_value=2**64), st.just(2**63 - 1)).map(str)
ranges = st.one_of(
    st.builds(
        lambda first, last, total: f"bytes {first}-{last}/{total}", numbers, numbers, numbers
    ),
    st.sampled_from(["bytes */0", "bytes 0--1/0", "bytes 0-0/0", "bytes */*", "Bytes 0-0/1"]),
    header_text,
)
packet_types = st.one_of(
    st.sampled_from(
        ["Ping", "Create-Session", "Fragment", "Close-Session", "Cancel-Session", "Ack", "FRAGMENT"]
    ),
    header_text,
)
session_ids = st.one_of(st.uuids().map(lambda u: f"{{{u}}}"), header_text)


@st.composite
def bits_headers(draw: st.DrawFn) -> Headers:
    headers = Headers()
    candidates = {
        "BITS-Packet-Type": packet_types,
        "Content-Length": st.one_of(numbers, header_text),
        "Content-Range": ranges,
        "BITS-Session-Id": session_ids,
        "BITS-Supported-Protocols": st.one_of(st.just(PROTOCOL_GUID), header_text),
        "Content-Encoding": st.sampled_from(["identity", "gzip", "", "IDENTITY"]),
        "Transfer-Encoding": st.just("chunked"),
    }
    for name, strategy in candidates.items():
        if draw(st.booleans()):
            headers.add(name, draw(strategy))
    return headers


@given(bits_headers())
@settings(max_examples=600)
def test_parse_yields_a_packet_or_a_bits_error(headers: Headers) -> None:
    try:
        packet = parse(headers)
    except BITSError as error:
        assert error.status in {400, 411}
    else:
        assert isinstance(packet, Packet)


paths = st.one_of(
    st.lists(header_text.filter(bool), min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.sampled_from(
        ["/../x", "/a/../../x", "/BITS-Sessions/Requests/x", "/%2e%2e/x", "//etc/passwd", "/CON"]
    ),
)


@given(path=paths, headers=bits_headers(), body=st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_any_request_gets_an_ack_and_writes_only_inside_the_root(
    path: str, headers: Headers, body: bytes
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        root = base / "root"
        app = BITSMiddleware(fallback_app, root)
        # what a WSGI server puts in PATH_INFO: the decoded bytes, as latin-1
        environ = raw_environ(PATH_INFO=path.encode("utf-8").decode("latin-1"))
        environ["wsgi.input"] = io.BytesIO(body)
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            environ[key if key == "CONTENT_LENGTH" else f"HTTP_{key}"] = value
        status, ack = call(app, environ)
        code = int(status.split()[0])
        assert ack["BITS-Packet-Type"] == "Ack"
        assert ack["Content-Length"] == "0"
        assert code in {200, 400, 403, 404, 411, 413, 416, 500, 501, 503}
        if code != 200:
            assert ack["BITS-Error-Code"] == ack["BITS-Error"]
        # a 500 is never an unexplained internal error
        assert code != 500 or ack["BITS-Error-Code"] in {"0x8020001F", "0x80200020"}
        for directory, _, files in os.walk(base):
            for name in files:
                assert Path(directory, name).is_relative_to(root)
