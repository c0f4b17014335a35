"""BITSMiddleware end to end in-process: dispatch, the packets, the session rules (PROTOCOL.md)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from bits_wsgi import BITSMiddleware, UploadDirectory
from bits_wsgi.backends import FilesystemBackend
from bits_wsgi.protocol import PROTOCOL_GUID

from .conftest import BitsClient, call, error_of, fallback_app, raw_environ
from .support.ids import key_of

Make = Callable[..., BitsClient]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def records(upload_dir: Path) -> list[dict[str, Any]]:
    found = (upload_dir / "BITS-Sessions" / "Requests").glob("*/session.json")
    return [json.loads(p.read_text()) for p in found]


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
    assert not (upload_dir / "BITS-Sessions" / "Requests" / session_id / "requestfile.bin").exists()


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


# -- fragments (§4) --------------------------------------------------------------------------


def test_multi_fragment_upload_is_byte_exact(make_client: Make, upload_dir: Path) -> None:
    data = os.urandom(100_000)
    client = make_client()
    client.upload(data, fragment_size=7_000)
    assert sha256((upload_dir / "f.bin").read_bytes()) == sha256(data)


def test_gap_is_416_with_received(make_client: Make) -> None:
    client = make_client()
    client.create()
    assert client.fragment(b"a" * 10, 0, 100).headers["BITS-Received-Content-Range"] == "10"
    response = client.fragment(b"b" * 10, 20, 100)
    assert error_of(response) == (416, "0x00000000", "0x5")
    assert response.headers["BITS-Received-Content-Range"] == "10"
    assert response.headers["BITS-Session-Id"] == client.session_id


def test_first_fragment_past_zero_is_a_gap(make_client: Make) -> None:
    client = make_client()
    client.create()
    response = client.fragment(b"x" * 10, 5, 100)
    assert response.status_int == 416
    assert response.headers["BITS-Received-Content-Range"] == "0"


def test_overlap_writes_only_the_new_tail(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.create()
    client.fragment(b"A" * 10, 0, 20)
    # bytes 5..14, where 5..9 differ from what is held: held bytes are never rewritten
    response = client.fragment(b"Z" * 5 + b"B" * 5, 5, 20)
    assert response.headers["BITS-Received-Content-Range"] == "15"
    client.fragment(b"C" * 5, 15, 20)
    assert (upload_dir / "f.bin").read_bytes() == b"A" * 10 + b"B" * 5 + b"C" * 5


def test_duplicate_fragment_acks_the_current_offset(make_client: Make) -> None:
    client = make_client()
    client.create()
    client.fragment(b"x" * 10, 0, 30)
    client.fragment(b"y" * 10, 10, 30)
    response = client.fragment(b"x" * 10, 0, 30)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "20"


def test_changed_total_is_400_with_received(make_client: Make) -> None:
    client = make_client()
    client.create()
    client.fragment(b"x" * 10, 0, 30)
    response = client.fragment(b"x" * 10, 10, 31)
    assert error_of(response)[0:2] == (400, "0x80070057")
    assert response.headers["BITS-Received-Content-Range"] == "10"


def test_fragment_over_max_fragment_size_is_413(make_client: Make) -> None:
    client = make_client(max_fragment_size=8 * 1024)
    client.create()
    response = client.fragment(b"x" * (8 * 1024 + 1), 0, 10**6)
    assert error_of(response) == (413, "0x80200020", "0x5")
    assert client.fragment(b"x" * 8 * 1024, 0, 10**6).status_int == 200


def test_total_over_max_upload_size_is_500_and_stores_nothing(
    make_client: Make, upload_dir: Path
) -> None:
    client = make_client(max_upload_size=1000)
    client.create()
    response = client.fragment(b"x" * 10, 0, 1001)
    assert error_of(response) == (500, "0x80200020", "0x5")
    assert records(upload_dir)[0]["received"] == 0
    assert records(upload_dir)[0]["total"] is None


def test_fragment_to_another_path_is_400(make_client: Make) -> None:
    client = make_client(path="/a.bin")
    client.create()
    response = client.fragment(b"x", 0, 2, path="/b.bin")
    assert error_of(response)[0] == 400
    assert response.headers["BITS-Received-Content-Range"] == "0"


def test_short_body_discards_the_fragment(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir)
    client = BitsClient(app)
    client.create()
    assert client.fragment(b"a" * 100, 0, 1000).status_int == 200
    environ = raw_environ(
        HTTP_BITS_PACKET_TYPE="Fragment",
        HTTP_BITS_SESSION_ID=client.session_id,
        HTTP_CONTENT_RANGE="bytes 100-299/1000",
        CONTENT_LENGTH="200",
    )
    environ["wsgi.input"] = io.BytesIO(b"b" * 50)  # the client went away after 50 bytes
    status, headers = call(app, environ)
    assert status.startswith("400")
    assert headers["BITS-Received-Content-Range"] == "100"
    # the stray 50 bytes are cut: the resumed upload is byte-exact
    for first in range(100, 1000, 300):
        assert client.fragment(b"c" * min(300, 1000 - first), first, 1000).status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"a" * 100 + b"c" * 900


# -- zero-length files (§4.6, D13) -----------------------------------------------------------


@pytest.mark.parametrize("content_range", ["bytes */0", "bytes 0--1/0", "bytes 0-0/0"])
def test_zero_length_upload(make_client: Make, upload_dir: Path, content_range: str) -> None:
    client = make_client()
    client.create()
    response = client.post(
        "Fragment", {"BITS-Session-Id": client.session_id or "", "Content-Range": content_range}
    )
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "0"
    assert (upload_dir / "f.bin").read_bytes() == b""
    assert client.close().status_int == 200


def test_close_without_fragments_creates_nothing(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.create()
    assert client.close().status_int == 200
    assert not (upload_dir / "f.bin").exists()


# -- completion, commit, overwrite (§4.5, §10.2, D15) ----------------------------------------


def test_commit_on_final_fragment_by_default(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.upload(b"done")
    assert (upload_dir / "f.bin").read_bytes() == b"done"


def test_partial_upload_is_never_committed(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.create()
    client.fragment(b"half", 0, 8)
    assert client.close().status_int == 200
    assert not (upload_dir / "f.bin").exists()
    assert client.fragment(b"rest", 4, 8).status_int == 500


def test_commit_on_close(make_client: Make, upload_dir: Path) -> None:
    client = make_client(commit_on="close")
    client.upload(b"later")
    assert not (upload_dir / "f.bin").exists()
    assert client.close().status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"later"


def test_cancel_under_commit_on_close_commits_nothing(make_client: Make, upload_dir: Path) -> None:
    client = make_client(commit_on="close")
    client.upload(b"never")
    assert client.cancel().status_int == 200
    assert not (upload_dir / "f.bin").exists()


def test_cancel_after_commit_keeps_the_destination(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.upload(b"kept")
    assert client.cancel().status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"kept"


def test_existing_destination_refuses_create(make_client: Make, upload_dir: Path) -> None:
    upload_dir.mkdir()
    (upload_dir / "f.bin").write_bytes(b"old")
    response = make_client().create()
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert "BITS-Session-Id" not in response.headers


def test_allow_overwrites_replaces(make_client: Make, upload_dir: Path) -> None:
    upload_dir.mkdir()
    (upload_dir / "f.bin").write_bytes(b"old")
    client = make_client(allow_overwrites=True)
    client.upload(b"new")
    assert (upload_dir / "f.bin").read_bytes() == b"new"


def test_destination_appearing_mid_upload_is_403_then_resumable(
    make_client: Make, upload_dir: Path
) -> None:
    client = make_client()
    client.create()
    client.fragment(b"12345", 0, 10)
    (upload_dir / "f.bin").write_bytes(b"intruder")
    response = client.fragment(b"67890", 5, 10)
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert response.headers["BITS-Received-Content-Range"] == "10"
    assert (upload_dir / "f.bin").read_bytes() == b"intruder"
    # the session stays COMPLETE: once the file is gone, a repeated final fragment commits
    (upload_dir / "f.bin").unlink()
    again = client.fragment(b"67890", 5, 10)
    assert again.status_int == 200 and again.headers["BITS-Received-Content-Range"] == "10"
    assert (upload_dir / "f.bin").read_bytes() == b"1234567890"


def test_repeated_final_fragment_replays_the_ack(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.upload(b"abcdef", fragment_size=3)
    (upload_dir / "f.bin").unlink()  # proof that nothing is committed a second time
    response = client.fragment(b"def", 3, 6)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "6"
    assert not (upload_dir / "f.bin").exists()


def test_commit_on_close_with_destination_appearing_is_403(
    make_client: Make, upload_dir: Path
) -> None:
    client = make_client(commit_on="close")
    client.upload(b"mine")
    (upload_dir / "f.bin").write_bytes(b"theirs")
    assert error_of(client.close())[0:2] == (403, "0x80070005")
    (upload_dir / "f.bin").unlink()
    assert client.close().status_int == 200  # the session was kept
    assert (upload_dir / "f.bin").read_bytes() == b"mine"


def test_close_with_the_data_gone_is_404(make_client: Make, upload_dir: Path) -> None:
    client = make_client(commit_on="close")
    client.upload(b"vanishes")
    for data_file in (upload_dir / "BITS-Sessions" / "Requests").glob("*/requestfile.bin"):
        data_file.unlink()
    assert error_of(client.close()) == (404, "0x80070002", "0x5")


# -- tombstones, unknown sessions, expiry (§6, D4, D16) --------------------------------------


def test_close_and_cancel_are_idempotent(make_client: Make) -> None:
    client = make_client()
    client.upload(b"x")
    assert client.close().status_int == 200
    assert client.close().status_int == 200
    assert client.cancel().status_int == 200


def test_fragment_after_cancel_is_session_not_found(make_client: Make) -> None:
    client = make_client()
    client.create()
    client.cancel()
    response = client.fragment(b"x", 0, 1)
    assert error_of(response) == (500, "0x8020001F", "0x5")
    assert response.headers["BITS-Session-Id"] == client.session_id


def test_tombstones_survive_a_restart(upload_dir: Path) -> None:
    first = BitsClient(BITSMiddleware(fallback_app, upload_dir))
    first.upload(b"x")
    first.close()
    second = BitsClient(BITSMiddleware(fallback_app, upload_dir))
    assert second.close(session_id=first.session_id).status_int == 200
    assert second.fragment(b"x", 0, 1, session_id=first.session_id).status_int == 500


@pytest.mark.parametrize(
    "session_id",
    [
        "{11111111-2222-3333-4444-555555555555}",
        "not-a-guid",
        "../../../../etc/passwd",
        "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67},{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}",
    ],
)
def test_unknown_sessions_are_500_session_not_found(
    make_client: Make, upload_dir: Path, session_id: str
) -> None:
    client = make_client()
    for response in (client.fragment(b"x", 0, 1, session_id=session_id), client.close(session_id)):
        assert error_of(response) == (500, "0x8020001F", "0x5")
    # probing ids leaves nothing behind
    assert list((upload_dir / "BITS-Sessions" / "Locks").iterdir()) == []


def test_session_id_is_matched_case_and_brace_insensitively(make_client: Make) -> None:
    client = make_client()
    client.create()
    assert client.session_id is not None
    variant = client.session_id.strip("{}").lower()
    response = client.fragment(b"abc", 0, 3, session_id=variant)
    assert response.status_int == 200
    assert response.headers["BITS-Session-Id"] == variant  # echoed verbatim


def _age_sessions(upload_dir: Path, seconds: float) -> None:
    backend = FilesystemBackend(upload_dir)
    for session_id in backend.session_ids():
        record = backend.load(session_id)
        assert record is not None
        record.last_activity -= seconds
        backend.save(record)


def test_idle_session_expires_lazily(make_client: Make, upload_dir: Path) -> None:
    client = make_client(session_timeout=60)
    client.create()
    client.fragment(b"abc", 0, 10)
    _age_sessions(upload_dir, 61)
    assert error_of(client.fragment(b"def", 3, 10)) == (500, "0x8020001F", "0x5")
    assert records(upload_dir) == []  # deleted, no tombstone


def test_activity_keeps_a_session_alive(make_client: Make, upload_dir: Path) -> None:
    client = make_client(session_timeout=60)
    client.create()
    _age_sessions(upload_dir, 50)
    client.fragment(b"abc", 0, 10)
    _age_sessions(upload_dir, 50)
    assert client.fragment(b"def", 3, 10).status_int == 200


def test_corrupt_record_is_session_not_found(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.create()
    for path in (upload_dir / "BITS-Sessions" / "Requests").glob("*/session.json"):
        path.write_text("{not json")
    assert error_of(client.fragment(b"x", 0, 1)) == (500, "0x8020001F", "0x5")


# -- identity (§9.1, D8) ---------------------------------------------------------------------


def test_another_identity_gets_403_and_changes_nothing(upload_dir: Path, make_client: Make) -> None:
    alice = make_client(user="alice")
    alice.create()
    alice.fragment(b"abc", 0, 6)
    before = records(upload_dir)
    mallory = BitsClient(alice.test.app, user="mallory")
    for response in (
        mallory.fragment(b"xyz", 3, 6, session_id=alice.session_id),
        mallory.close(alice.session_id),
        mallory.cancel(alice.session_id),
    ):
        assert error_of(response) == (403, "0x80070005", "0x5")
    assert records(upload_dir) == before  # not even the activity time moved
    anonymous = BitsClient(alice.test.app)
    assert anonymous.fragment(b"xyz", 3, 6, session_id=alice.session_id).status_int == 403
    assert alice.fragment(b"def", 3, 6).status_int == 200


def test_identity_callable(upload_dir: Path) -> None:
    def tenant(environ: Any) -> str:
        return str(environ.get("HTTP_X_TENANT", ""))

    app = BITSMiddleware(fallback_app, upload_dir, identity=tenant)
    owner = BitsClient(app)
    owner.create(extra_environ={"HTTP_X_TENANT": "t1"})
    assert owner.fragment(b"a", 0, 2, headers={"X-Tenant": "t2"}).status_int == 403
    assert owner.fragment(b"a", 0, 2, headers={"X-Tenant": "t1"}).status_int == 200


# -- limits and busy sessions (D16, D17) -----------------------------------------------------


def test_session_limit_per_identity(make_client: Make, upload_dir: Path) -> None:
    alice = make_client(user="alice", session_limit=2, path="/a")
    first, second = alice.create(), alice.create()
    assert first.status_int == second.status_int == 200
    refused = alice.create()
    assert error_of(refused) == (503, "0x801901F7", "0x5")
    assert refused.headers["Retry-After"] == "60"
    bob = BitsClient(alice.test.app, path="/a", user="bob")
    assert bob.create().status_int == 200  # limits are per identity
    alice.cancel(first.headers["BITS-Session-Id"])
    assert alice.create().status_int == 200


def test_expired_sessions_do_not_count_against_the_limit(
    make_client: Make, upload_dir: Path
) -> None:
    client = make_client(user="alice", session_limit=1, session_timeout=60)
    client.create()
    assert client.create().status_int == 503
    _age_sessions(upload_dir, 61)
    assert client.create().status_int == 200


def test_session_limit_zero_disables_it(make_client: Make) -> None:
    client = make_client(session_limit=0)
    assert all(client.create().status_int == 200 for _ in range(60))


def test_global_session_cap_counts_every_identity(make_client: Make, upload_dir: Path) -> None:
    alice = make_client(user="alice", max_sessions=3, session_timeout=60)
    for server in alice.test.app.servers:  # count and sweep whenever the cap is reached
        assert server.upkeep.session_cap is not None  # (how often is tests/test_session_cap.py's)
        cap = server.upkeep.session_cap
        cap.recount_interval = cap.sweep_interval = 0
    bob = BitsClient(alice.test.app, user="bob")
    carol = BitsClient(alice.test.app, user="carol")
    assert [c.create().status_int for c in (alice, bob, carol)] == [200, 200, 200]
    refused = BitsClient(alice.test.app, user="dave").create()
    assert error_of(refused) == (503, "0x801901F7", "0x5")
    assert refused.headers["Retry-After"] == "60"
    assert len(records(upload_dir)) == 3  # the refused Create left nothing behind
    assert carol.cancel().status_int == 200  # a tombstone frees its place
    assert BitsClient(alice.test.app, user="dave").create().status_int == 200
    assert bob.create().status_int == 503
    _age_sessions(upload_dir, 61)  # at the cap, expired sessions are swept out first
    assert bob.create().status_int == 200


def test_global_session_cap_none_disables_it(make_client: Make) -> None:
    client = make_client(max_sessions=None, session_limit=None)
    assert all(client.create().status_int == 200 for _ in range(30))


def test_busy_session_is_503_not_session_not_found(make_client: Make, upload_dir: Path) -> None:
    client = make_client(lock_timeout=0.05)
    client.create()
    assert client.session_id is not None
    key = key_of(client.session_id)
    assert key is not None
    with FilesystemBackend(upload_dir).lock(key, 1.0):
        response = client.fragment(b"x", 0, 2)
    assert error_of(response) == (503, "0x801901F7", "0x5")
    assert response.headers["Retry-After"] == "60"
    assert client.fragment(b"x", 0, 2).status_int == 200


def test_concurrent_duplicates_of_one_fragment(make_client: Make, upload_dir: Path) -> None:
    client = make_client()
    client.create()
    data = os.urandom(200_000)
    results: list[int] = []

    def send() -> None:
        worker = BitsClient(client.test.app)
        results.append(worker.fragment(data, 0, len(data), session_id=client.session_id).status_int)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 4
    assert sha256((upload_dir / "f.bin").read_bytes()) == sha256(data)


# -- failures of the machine (§4.3, §5.1) ----------------------------------------------------


class FlakyDisk(FilesystemBackend):
    """Writes part of a fragment, then reports a full disk once."""

    full = True

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        if not self.full:
            return super().write(session_id, offset, chunks)
        self.full = False

        def some() -> Iterable[bytes]:
            for chunk in chunks:
                yield chunk[: len(chunk) // 2]
                raise OSError(errno.ENOSPC, "No space left on device")

        return super().write(session_id, offset, some())


def test_disk_full_is_500_and_the_session_stays_usable(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir, backend=FlakyDisk(upload_dir))
    client = BitsClient(app)
    client.create()
    response = client.fragment(b"abcdef", 0, 6)
    assert error_of(response) == (500, "0x80070070", "0x5")
    assert response.headers["BITS-Received-Content-Range"] == "0"
    assert client.fragment(b"abcdef", 0, 6).status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"abcdef"


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


def test_fsync_always_mode_uploads(make_client: Make, upload_dir: Path) -> None:
    data = os.urandom(50_000)
    make_client(fsync="always").upload(data, fragment_size=8_000)
    assert sha256((upload_dir / "f.bin").read_bytes()) == sha256(data)


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


# -- one destination, two sessions (§10.1) ---------------------------------------------------


def test_second_session_to_the_same_destination_gets_403_at_commit(
    make_client: Make, upload_dir: Path
) -> None:
    first = make_client()
    second = BitsClient(first.test.app)
    first.create()
    second.create()
    first.fragment(b"first", 0, 5)
    response = second.fragment(b"second", 0, 6)
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert (upload_dir / "f.bin").read_bytes() == b"first"


def test_concurrent_completions_commit_exactly_one(make_client: Make, upload_dir: Path) -> None:
    first = make_client()
    clients = [first] + [BitsClient(first.test.app) for _ in range(5)]
    payloads = [os.urandom(50_000) for _ in clients]
    for client in clients:
        client.create()
    statuses: list[int] = []

    def complete(client: BitsClient, data: bytes) -> None:
        statuses.append(client.fragment(data, 0, len(data)).status_int)

    threads = [
        threading.Thread(target=complete, args=pair) for pair in zip(clients, payloads, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [403] * 5
    assert (upload_dir / "f.bin").read_bytes() in payloads


class LossyBackend(FilesystemBackend):
    """A buggy backend that silently stores less than it was given."""

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        return super().write(session_id, offset, (chunk[:-1] for chunk in chunks))


def test_a_backend_that_loses_bytes_never_moves_the_offset(upload_dir: Path) -> None:
    app = BITSMiddleware(fallback_app, upload_dir, backend=LossyBackend(upload_dir))
    client = BitsClient(app)
    client.create()
    response = client.fragment(b"abcdef", 0, 12)
    assert error_of(response) == (500, "0x801901F4", "0x5")
    assert records(upload_dir)[0]["received"] == 0


def test_an_enormous_declared_total_allocates_nothing(make_client: Make, upload_dir: Path) -> None:
    """T and B are never trusted ahead of the data (PROTOCOL.md §9.3)."""
    client = make_client()
    client.create()
    huge = 2**63 - 1
    response = client.fragment(b"x", 0, huge)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "1"
    (data_file,) = (upload_dir / "BITS-Sessions" / "Requests").glob("*/requestfile.bin")
    assert data_file.stat().st_size == 1
    assert data_file.stat().st_blocks <= 8  # no sparse preallocation either


def test_a_crash_between_the_last_bytes_and_the_commit_is_recovered(
    make_client: Make, upload_dir: Path
) -> None:
    """Found by benchmarks/soak.py: a single-fragment upload whose worker died after writing the
    bytes but before recording the total. The retried fragment must complete and commit, not be
    taken for a duplicate (which would let Close discard a finished upload)."""
    client = make_client()
    client.create()
    assert client.session_id is not None
    key = key_of(client.session_id)
    assert key is not None
    FilesystemBackend(upload_dir).write(key, 0, [b"all the bytes"])  # then the worker died
    response = client.fragment(b"all the bytes", 0, 13)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "13"
    assert (upload_dir / "f.bin").read_bytes() == b"all the bytes"
    assert client.close().status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"all the bytes"
