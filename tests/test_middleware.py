"""BITSMiddleware in-process: what it adds to the server (PROTOCOL.md §2.3): dispatch and
pass-through, the envelope and its validation order, the session-id echo, the identity hook,
the drain of unused bodies, the Appendix A captures replayed header for header, and what
reaches the wire when something fails. The session rules themselves are
tests/test_server_sessions.py's, without WSGI."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from bits_wsgi import BITSMiddleware, UploadDirectory
from bits_wsgi.backends import FilesystemBackend
from bits_wsgi.protocol import PROTOCOL_GUID

from .conftest import BitsClient, call, error_of, fallback_app, raw_environ
from .support.ids import key_of
from .support.sessions import data_files, records, sha256

Make = Callable[..., BitsClient]


# -- dispatch (§2.3, D10, D21) ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_reach_the_app_with_the_body_unread(make_client: Make, method: str) -> None:
    client = make_client()
    response = client.test.request(
        "/f.bin", method=method, body=b"payload-\x00\xff", headers={"BITS-Packet-Type": "Ping"}
    )
    assert response.status_int == 200
    assert response.body == f"app {method} /f.bin ".encode() + b"payload-\x00\xff"


def test_werkzeug_client_pass_through(upload_dir: Path) -> None:
    client = Client(BITSMiddleware(fallback_app, upload_dir, prefix="/uploads/"))
    response = client.post("/uploads/form", data=b"a=1&b=2", content_type="text/plain")
    assert response.status_code == 200
    assert response.get_data() == b"app POST /uploads/form a=1&b=2"


def test_bits_outside_every_upload_directory_is_501(make_client: Make) -> None:
    client = make_client(prefix="/uploads/")
    response = client.ping(path="/elsewhere/f.bin")
    assert error_of(response) == (501, "0x80070005", "0x5")
    assert response.headers["BITS-Packet-Type"] == "Ack"
    assert client.ping(path="/uploads/f.bin").status_int == 200


def test_prefix_without_slashes_is_normalised(make_client: Make) -> None:
    client = make_client(prefix="uploads", path="/uploads/a/b.bin")
    client.upload(b"x" * 10)
    assert client.close().status_int == 200


def test_longest_prefix_wins(tmp_path: Path) -> None:
    app = BITSMiddleware(
        fallback_app,
        directories=[
            UploadDirectory(upload_dir=tmp_path / "public", prefix="/up/"),
            UploadDirectory(upload_dir=tmp_path / "private", prefix="/up/private/"),
        ],
    )
    BitsClient(app, path="/up/private/f.bin").upload(b"secret")
    BitsClient(app, path="/up/f.bin").upload(b"open")
    assert (tmp_path / "private" / "f.bin").read_bytes() == b"secret"
    assert (tmp_path / "public" / "f.bin").read_bytes() == b"open"


def test_method_override_is_off_by_default(make_client: Make) -> None:
    client = make_client()
    response = client.test.post(
        "/f.bin",
        headers={"X-Http-Method-Override": "BITS_POST", "BITS-Packet-Type": "Ping"},
    )
    assert response.body.startswith(b"app POST")


def test_method_override_when_enabled(make_client: Make) -> None:
    client = make_client(allow_method_override=True)
    response = client.test.post(
        "/f.bin",
        headers={"X-Http-Method-Override": "BITS_POST", "BITS-Packet-Type": "Ping"},
        content_type="application/octet-stream",
    )
    assert response.headers["BITS-Packet-Type"] == "Ack"
    assert response.body == b""


def test_configuration_errors_at_start_up(upload_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_fragment_size"):
        BITSMiddleware(fallback_app, upload_dir, max_fragment_size=100)
    with pytest.raises(ValueError, match="duplicate"):
        BITSMiddleware(
            fallback_app,
            directories=[
                UploadDirectory(upload_dir=upload_dir, prefix="/a"),
                UploadDirectory(upload_dir=upload_dir / "b", prefix="/a/"),
            ],
        )
    with pytest.raises(ValueError):
        BITSMiddleware(fallback_app)
    with pytest.raises(TypeError):
        BITSMiddleware(fallback_app, allow_overwrites=True)
    with pytest.raises(ValueError, match="error_headers"):
        BITSMiddleware(fallback_app, upload_dir, error_headers=("X-Error",))


# -- Appendix A.1: a Windows client's capture, header for header -----------------------------


def test_appendix_a1_upload_replayed(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir, prefix="/upload/")
    client = BitsClient(app)
    data = os.urandom(4892)
    common = {
        "Accept": "*/*",
        "Content-Name": "rfc2119.txt",
        "User-Agent": "Microsoft BITS/6.7",
        "Host": "frankcao8",
        "Connection": "Keep-Alive",
    }
    path = "/upload/2000mb-rfc2119.txt"

    created = client.post(
        "Create-Session",
        {**common, "BITS-Supported-Protocols": "{7df0354d-249b-430f-820d-3d2a9bef4931}"},
        path=path,
    )
    assert created.status == "200 OK"
    session_id = created.headers["BITS-Session-Id"]
    assert key_of(session_id) is not None
    assert session_id == session_id.upper() and session_id.startswith("{")
    assert list(created.headerlist) == [
        ("BITS-Packet-Type", "Ack"),
        ("BITS-Protocol", "{7df0354d-249b-430f-820d-3d2a9bef4931}"),
        ("BITS-Session-Id", session_id),
        ("Accept-Encoding", "identity"),
        ("Content-Length", "0"),
    ]

    fragment = client.post(
        "Fragment",
        {**common, "BITS-Session-Id": session_id, "Content-Range": "bytes 0-4891/4892"},
        body=data,
        path=path,
    )
    assert fragment.status == "200 OK"
    assert list(fragment.headerlist) == [
        ("BITS-Packet-Type", "Ack"),
        ("BITS-Session-Id", session_id),  # D5: echoed, unlike IIS
        ("BITS-Received-Content-Range", "4892"),
        ("Content-Length", "0"),
    ]
    assert fragment.body == b""

    ping = client.post("Ping", common, path=path)
    assert list(ping.headerlist) == [("BITS-Packet-Type", "Ack"), ("Content-Length", "0")]

    close = client.post("Close-Session", {**common, "BITS-Session-Id": session_id}, path=path)
    assert close.status == "200 OK"
    assert close.headers["BITS-Session-Id"] == session_id
    assert "BITS-Error-Code" not in close.headers

    assert sha256((upload_dir / "2000mb-rfc2119.txt").read_bytes()) == sha256(data)
    assert data_files(upload_dir) == []


def test_appendix_a2_host_id_on_create(make_client: Make) -> None:
    client = make_client(host_id="FRANKCAO8", host_id_fallback_timeout=110)
    created = client.create()
    assert created.headers["BITS-Host-Id"] == "FRANKCAO8"
    assert created.headers["BITS-Host-Id-Fallback-Timeout"] == "110"
    # Windows then pings and uploads with Host: FRANKCAO8; only the path is compared (§6.1)
    response = client.fragment(b"abc", 0, 3, extra_environ={"HTTP_HOST": "FRANKCAO8"})
    assert response.status_int == 200


def test_no_host_id_headers_without_host_id(make_client: Make) -> None:
    created = make_client().create()
    assert "BITS-Host-Id" not in created.headers
    assert "BITS-Host-Id-Fallback-Timeout" not in created.headers


# -- validation order and envelope errors (§2.3) ---------------------------------------------


def test_bad_packet_type_is_400(make_client: Make) -> None:
    client = make_client()
    assert error_of(client.post("Ack")) == (400, "0x80070057", "0x5")
    assert error_of(client.post("Upload")) == (400, "0x80070057", "0x5")


def test_header_over_4_kib_is_400(make_client: Make) -> None:
    response = make_client().ping(headers={"X-Long": "a" * 4097})
    assert error_of(response) == (400, "0x80070057", "0x5")


def test_body_on_create_is_400_and_creates_nothing(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    response = client.post(
        "Create-Session", {"BITS-Supported-Protocols": PROTOCOL_GUID}, body=b"hello"
    )
    assert error_of(response) == (400, "0x80070057", "0x5")
    assert records(upload_dir) == []


def test_missing_content_length_is_411(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir)
    status, headers = call(app, raw_environ(HTTP_BITS_PACKET_TYPE="Ping"))
    assert status == "411 Length Required"
    assert headers["BITS-Error-Code"] == "0x80070057"


def test_chunked_body_is_411(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir)
    environ = raw_environ(
        HTTP_BITS_PACKET_TYPE="Fragment", HTTP_TRANSFER_ENCODING="chunked", CONTENT_LENGTH="5"
    )
    status, _ = call(app, environ)
    assert status.startswith("411")


def test_non_integer_content_length_is_400(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir)
    status, _ = call(app, raw_environ(HTTP_BITS_PACKET_TYPE="Ping", CONTENT_LENGTH="ten"))
    assert status.startswith("400")


def test_ping_never_checks_the_destination(make_client: Make) -> None:
    assert make_client(path="/../../etc/passwd").ping().status_int == 200


@pytest.mark.parametrize(
    "path", ["/a/../b", "/CON", "/BITS-Sessions/Requests/x", "/dir/", "/a:b", "/x" * 1200]
)
def test_invalid_destinations_are_400(make_client: Make, path: str, upload_dir: Path) -> None:
    response = make_client(path=path).create()
    assert error_of(response) == (400, "0x80070057", "0x5")
    assert "BITS-Session-Id" not in response.headers
    assert "BITS-Protocol" not in response.headers


def test_destination_error_comes_before_the_fragment_size_check(make_client: Make) -> None:
    client = make_client(max_fragment_size=5 * 1024, path="/CON")
    response = client.fragment(b"x" * 6000, 0, 6000, session_id="{" + "A" * 8 + "}")
    assert response.status_int == 400


def test_existing_directory_is_not_a_destination(make_client: Make, upload_dir: Path) -> None:
    (upload_dir / "d").mkdir(parents=True)
    assert error_of(make_client(path="/d").create())[0] == 400


def test_unsupported_protocol_is_400(make_client: Make) -> None:
    response = make_client().post(
        "Create-Session", {"BITS-Supported-Protocols": "{00000000-0000-0000-0000-000000000000}"}
    )
    assert error_of(response) == (400, "0x80070057", "0x5")


def test_error_headers_option(make_client: Make) -> None:
    response = make_client(error_headers=("BITS-Error-Code",)).post("Ack")
    assert response.headers["BITS-Error-Code"] == "0x80070057"
    assert "BITS-Error" not in response.headers


# -- the session-id echo on every Fragment, Close and Cancel Ack (D5) ------------------------


def test_gap_is_416_with_received(make_client: Make) -> None:
    client = make_client()
    client.create()
    assert client.fragment(b"a" * 10, 0, 100).headers["BITS-Received-Content-Range"] == "10"
    response = client.fragment(b"b" * 10, 20, 100)
    assert error_of(response) == (416, "0x00000000", "0x5")
    assert response.headers["BITS-Received-Content-Range"] == "10"
    assert response.headers["BITS-Session-Id"] == client.session_id


def test_fragment_after_cancel_is_session_not_found(make_client: Make) -> None:
    client = make_client()
    client.create()
    client.cancel()
    response = client.fragment(b"x", 0, 1)
    assert error_of(response) == (500, "0x8020001F", "0x5")
    assert response.headers["BITS-Session-Id"] == client.session_id


def test_session_id_is_matched_case_and_brace_insensitively(make_client: Make) -> None:
    client = make_client()
    client.create()
    assert client.session_id is not None
    variant = client.session_id.strip("{}").lower()
    response = client.fragment(b"abc", 0, 3, session_id=variant)
    assert response.status_int == 200
    assert response.headers["BITS-Session-Id"] == variant  # echoed verbatim


# -- the identity hook (§9.1, D8) ------------------------------------------------------------


def test_identity_callable(upload_dir: Path) -> None:
    def tenant(environ: Any) -> str:
        return str(environ.get("HTTP_X_TENANT", ""))

    app = BITSMiddleware(fallback_app, upload_dir, identity=tenant)
    owner = BitsClient(app)
    owner.create(extra_environ={"HTTP_X_TENANT": "t1"})
    assert owner.fragment(b"a", 0, 2, headers={"X-Tenant": "t2"}).status_int == 403
    assert owner.fragment(b"a", 0, 2, headers={"X-Tenant": "t1"}).status_int == 200


# -- what reaches the wire when something fails (§5.1) ---------------------------------------


class BrokenBackend(FilesystemBackend):
    def load(self, session_id: str) -> Any:
        raise RuntimeError("/secret/internal/path exploded")


def test_unexpected_errors_are_500_acks_without_details(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir, backend=BrokenBackend(upload_dir))
    client = BitsClient(app)
    client.create()
    response = client.fragment(b"x", 0, 1)
    assert error_of(response) == (500, "0x801901F4", "0x5")
    assert response.body == b""
    assert "secret" not in str(response.headers)


# -- unused bodies are drained so the Ack reaches the client (docs/protocol.md) --------------


def _gap_environ(session_id: str, body: bytes, first: int, total: int) -> dict[str, Any]:
    environ = raw_environ(
        HTTP_BITS_PACKET_TYPE="Fragment",
        HTTP_BITS_SESSION_ID=session_id,
        HTTP_CONTENT_RANGE=f"bytes {first}-{first + len(body) - 1}/{total}",
        CONTENT_LENGTH=str(len(body)),
    )
    environ["wsgi.input"] = io.BytesIO(body)
    return environ


def test_unused_fragment_body_is_drained(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir)
    client = BitsClient(app)
    client.create()
    body = b"z" * (3 * 1024 * 1024)
    environ = _gap_environ(client.session_id or "", body, 10, 10 * len(body))
    status, _ = call(app, environ)
    assert status.startswith("416")
    assert environ["wsgi.input"].tell() == len(body)


def test_draining_is_bounded(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir, max_fragment_size=1024 * 1024)
    limit = app.servers[0].directory.discard_limit
    assert limit == 16 * 1024 * 1024
    client = BitsClient(app)
    client.create()
    body = b"z" * (limit + 4096)
    environ = _gap_environ(client.session_id or "", body, 0, len(body))
    status, _ = call(app, environ)
    assert status.startswith("413")
    assert environ["wsgi.input"].tell() == limit


# -- more of the validation order (§2.3) -----------------------------------------------------


def test_upload_directory_check_comes_before_the_packet_type(make_client: Make) -> None:
    client = make_client(prefix="/uploads/", path="/elsewhere/f.bin")
    assert client.post("Nonsense").status_int == 501


def test_header_size_comes_before_content_length(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir)
    status, _ = call(app, raw_environ(HTTP_BITS_PACKET_TYPE="Ping", HTTP_X_BIG="a" * 5000))
    assert status.startswith("400")


def test_packet_headers_come_before_the_session(make_client: Make) -> None:
    client = make_client()
    response = client.post(
        "Fragment", {"BITS-Session-Id": "{11111111-2222-3333-4444-555555555555}"}, body=b"x"
    )
    assert error_of(response) == (400, "0x80070057", "0x5")  # no Content-Range: 400, not 500
