"""The hostile input corpus, through the whole middleware.

Each request gets its documented status and error code; afterwards nothing outside ROOT has
changed, a bystander session's record and bytes are exactly as they were, and the bystander
still finishes its upload byte-exact.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi import BITSMiddleware
from bits_wsgi.protocol import PROTOCOL_GUID

from .conftest import BitsClient, call, fallback_app, raw_environ

BAD_REQUEST = (400, "0x80070057")
NOT_FOUND = (500, "0x8020001F")
GUID = "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}"
BYSTANDER_DATA = b"bystander's bytes"


def create(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "PATH_INFO": path,
        "RAW_URI": path,  # what the server checks the target's length on
        "HTTP_BITS_PACKET_TYPE": "Create-Session",
        "HTTP_BITS_SUPPORTED_PROTOCOLS": PROTOCOL_GUID,
        "CONTENT_LENGTH": "0",
        **extra,
    }


def fragment(content_range: str, body: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "PATH_INFO": "/victim.bin",
        "HTTP_BITS_PACKET_TYPE": "Fragment",
        "HTTP_BITS_SESSION_ID": "BYSTANDER",
        "HTTP_CONTENT_RANGE": content_range,
        "CONTENT_LENGTH": str(len(body)),
        "body": body,
        **extra,
    }


def utf8(text: str) -> str:
    """PATH_INFO as a WSGI server hands it over: the URL's bytes, decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


CORPUS: list[tuple[str, dict[str, Any], tuple[int, str | None]]] = [
    # -- path traversal in every encoding (§9.2) --
    ("dot-dot", create("/../escape.bin"), BAD_REQUEST),
    ("dot-dot-deep", create("/a/../../escape.bin"), BAD_REQUEST),
    ("dot-segment", create("/a/./b.bin"), BAD_REQUEST),
    ("decoded-%2e%2e", create("/../../etc/passwd"), BAD_REQUEST),
    ("encoded-slash-decoded", create("/a/..//escape.bin"), BAD_REQUEST),
    ("backslashes", create("/a\\..\\..\\escape.bin"), BAD_REQUEST),
    ("double-slash-absolute", create("//etc/passwd"), BAD_REQUEST),
    ("absolute-windows", create("/C:/Windows/win.ini"), BAD_REQUEST),
    ("unc", create("/\\\\server\\share\\x"), BAD_REQUEST),
    ("nul", create("/a\x00.bin"), BAD_REQUEST),
    ("control-character", create("/a\nb.bin"), BAD_REQUEST),
    ("overlong-utf8-dot", create("/\xc0\xae\xc0\xae/escape.bin"), BAD_REQUEST),
    ("not-utf8", create("/\xff\xfe.bin"), BAD_REQUEST),
    ("overlong-segment", create("/" + "a" * 256), BAD_REQUEST),
    ("overlong-target", create("/" + "a/" * 1200 + "x"), BAD_REQUEST),
    ("device-name", create("/CON"), BAD_REQUEST),
    ("device-name-extension", create("/dir/lpt1.txt"), BAD_REQUEST),
    ("device-name-trailing-space", create("/NUL .bin"), BAD_REQUEST),
    ("state-area", create("/BITS-Sessions/Requests/x"), BAD_REQUEST),
    ("state-area-case", create("/bits-sessions/Locks/x"), BAD_REQUEST),
    ("trailing-slash", create("/dir/"), BAD_REQUEST),
    ("fullwidth-dots-are-a-name", create(utf8("/\uff0e\uff0e")), (200, None)),
    # -- session-id injection (D4: unknown) --
    ("sid-traversal", fragment("bytes 0-0/1", b"x", HTTP_BITS_SESSION_ID="../../etc"), NOT_FOUND),
    ("sid-crlf", fragment("bytes 0-0/1", b"x", HTTP_BITS_SESSION_ID=GUID + "\r\nX: y"), NOT_FOUND),
    ("sid-two", fragment("bytes 0-0/1", b"x", HTTP_BITS_SESSION_ID=f"{GUID}, {GUID}"), NOT_FOUND),
    ("sid-glob", fragment("bytes 0-0/1", b"x", HTTP_BITS_SESSION_ID="*"), NOT_FOUND),
    ("sid-nul", fragment("bytes 0-0/1", b"x", HTTP_BITS_SESSION_ID=GUID[:-1] + "\x00}"), NOT_FOUND),
    # -- header sizes --
    ("range-over-4-kib", fragment("bytes 0-0/1" + " " * 5000, b"x"), BAD_REQUEST),
    (
        "sid-over-4-kib",
        fragment("bytes 0-0/1", b"x", HTTP_BITS_SESSION_ID="{" + "A" * 5000),
        BAD_REQUEST,
    ),
    # -- ranges: negative, inverted, past the total, overflowing --
    ("negative-first", fragment("bytes -5-0/10", b"x"), BAD_REQUEST),
    ("inverted", fragment("bytes 5-3/10", b"xxx"), BAD_REQUEST),
    ("last-past-total", fragment("bytes 0-10/5", b"x" * 11), BAD_REQUEST),
    ("unknown-unit", fragment("lines 0-0/1", b"x"), BAD_REQUEST),
    ("unknown-total", fragment("bytes 0-0/*", b"x"), BAD_REQUEST),
    ("overflowing", fragment(f"bytes 0-{2**64}/{2**64 + 1}", b"x"), BAD_REQUEST),
    ("range-not-body", fragment("bytes 0-9/20", b"x" * 5), BAD_REQUEST),
    ("two-ranges", fragment("bytes 0-0/2, bytes 1-1/2", b"x"), BAD_REQUEST),
    # -- Content-Length lies --
    ("negative-length", fragment("bytes 0-0/1", b"x", CONTENT_LENGTH="-1"), BAD_REQUEST),
    ("huge-length", fragment("bytes 0-0/1", b"x", CONTENT_LENGTH=str(10**30)), BAD_REQUEST),
    ("length-text", fragment("bytes 0-0/1", b"x", CONTENT_LENGTH="1e3"), BAD_REQUEST),
    ("no-length", fragment("bytes 0-0/1", b"x", CONTENT_LENGTH=""), (411, "0x80070057")),
    (
        "chunked",
        fragment("bytes 0-0/1", b"x", HTTP_TRANSFER_ENCODING="chunked"),
        (411, "0x80070057"),
    ),
    # -- packet types, encodings --
    ("unknown-packet", fragment("bytes 0-0/1", b"x", HTTP_BITS_PACKET_TYPE="Upload"), BAD_REQUEST),
    (
        "two-packet-types",
        fragment("bytes 0-0/1", b"x", HTTP_BITS_PACKET_TYPE="Fragment, Ping"),
        BAD_REQUEST,
    ),
    ("empty-packet-type", fragment("bytes 0-0/1", b"x", HTTP_BITS_PACKET_TYPE=""), BAD_REQUEST),
    ("compressed-body", fragment("bytes 0-0/1", b"x", HTTP_CONTENT_ENCODING="gzip"), BAD_REQUEST),
    (
        "body-on-close",
        {**fragment("bytes 0-0/1", b"x"), "HTTP_BITS_PACKET_TYPE": "Close-Session"},
        BAD_REQUEST,
    ),
]


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    """ROOT lives inside a jail whose every other file is watched."""
    (tmp_path / "outside.txt").write_text("keep")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0")
    return tmp_path


def snapshot(folder: Path, skip: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else ""
        for p in sorted(folder.rglob("*"))
        if not p.is_relative_to(skip)
    }


def session_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "BITS-Sessions" / "Requests").rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("name", "request_", "answer"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request(
    jail: Path, name: str, request_: dict[str, Any], answer: tuple[int, str | None]
) -> None:
    root = jail / "root"
    app = BITSMiddleware(fallback_app, root)
    bystander = BitsClient(app, path="/victim.bin")
    assert bystander.create().status_int == 200
    assert bystander.fragment(BYSTANDER_DATA[:5], 0, len(BYSTANDER_DATA)).status_int == 200
    outside, sessions = snapshot(jail, root), session_files(root)

    request = dict(request_)
    body = request.pop("body", b"")
    if request.get("HTTP_BITS_SESSION_ID") == "BYSTANDER":
        request["HTTP_BITS_SESSION_ID"] = bystander.session_id
    environ = raw_environ(**request)
    environ.setdefault("RAW_URI", environ["PATH_INFO"])
    environ["wsgi.input"] = io.BytesIO(body)
    status, headers = call(app, environ)

    assert (int(status.split()[0]), headers.get("BITS-Error-Code")) == answer, headers
    assert headers["BITS-Packet-Type"] == "Ack"
    assert all("\n" not in value and "\r" not in value for value in headers.values())
    assert snapshot(jail, root) == outside  # nothing written outside ROOT
    after = session_files(root)
    for path, content in sessions.items():  # the bystander's session is untouched
        assert after.get(path) == content, path
    response = bystander.fragment(BYSTANDER_DATA[5:], 5, len(BYSTANDER_DATA))
    assert response.status_int == 200
    assert (root / "victim.bin").read_bytes() == BYSTANDER_DATA


def test_a_header_flood_is_answered_like_any_request(tmp_path: Path) -> None:
    """Thousands of unrelated headers: the middleware reads only its own (the WSGI server
    bounds how many arrive: gunicorn's limit_request_fields)."""
    app = BITSMiddleware(fallback_app, tmp_path)
    flood = {f"HTTP_X_FLOOD_{n}": "y" * 100 for n in range(5000)}
    environ = raw_environ(**create("/f.bin"), **flood)
    environ["wsgi.input"] = io.BytesIO(b"")
    status, headers = call(app, environ)
    assert status.startswith("200") and headers["BITS-Session-Id"]


def test_a_long_body_uses_only_content_length_bytes(tmp_path: Path) -> None:
    """A body longer than Content-Length: the extra bytes are never read as data."""
    app = BITSMiddleware(fallback_app, tmp_path)
    client = BitsClient(app)
    assert client.create().status_int == 200
    request = fragment("bytes 0-2/3", b"abc", PATH_INFO="/f.bin")
    request.pop("body")
    environ = raw_environ(**request)
    environ["HTTP_BITS_SESSION_ID"] = client.session_id
    environ["wsgi.input"] = io.BytesIO(b"abcEXTRA-BYTES")
    status, _ = call(app, environ)
    assert status.startswith("200")
    assert (tmp_path / "f.bin").read_bytes() == b"abc"
