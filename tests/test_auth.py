"""BasicAuth for `bits-wsgi serve --user`: step 1 of the validation order (PROTOCOL.md §2.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import webtest
from werkzeug.datastructures import Authorization

from bits_wsgi import BasicAuth, BITSMiddleware

from .conftest import BitsClient, error_of, fallback_app


def basic(name: str, password: str) -> str:
    return Authorization("basic", {"username": name, "password": password}).to_header()


def make(upload_dir: Path) -> webtest.TestApp:
    return BasicAuth(
        BITSMiddleware(fallback_app, upload_dir, prefix="/up/"), {"alice": "s3cret", "bob": "pw"}
    )


def test_bits_without_credentials_gets_a_401_ack_with_a_challenge(upload_dir: Path) -> None:
    client = BitsClient(make(upload_dir), path="/up/f.bin")
    response = client.create()
    assert error_of(response) == (401, "0x80190191", "0x5")
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="BITS upload"')
    assert response.headers["BITS-Packet-Type"] == "Ack"
    assert not (upload_dir / "BITS-Sessions" / "Requests").exists() or not list(
        (upload_dir / "BITS-Sessions" / "Requests").iterdir()
    )


def test_authentication_comes_before_the_upload_directory_check(upload_dir: Path) -> None:
    response = BitsClient(make(upload_dir), path="/elsewhere/f.bin").ping()
    assert response.status_int == 401


def test_wrong_password_and_unknown_user_are_401(upload_dir: Path) -> None:
    client = BitsClient(make(upload_dir), path="/up/f.bin")
    for header in (basic("alice", "wrong"), basic("mallory", "s3cret"), "Bearer token", "junk"):
        assert client.ping(headers={"Authorization": header}).status_int == 401


def test_valid_credentials_bind_the_session_to_the_user(upload_dir: Path) -> None:
    app = make(upload_dir)
    alice = BitsClient(app, path="/up/f.bin")
    auth = {"Authorization": basic("alice", "s3cret")}
    assert alice.create(headers=auth).status_int == 200
    assert alice.fragment(b"abc", 0, 6, headers=auth).status_int == 200
    bob = {"Authorization": basic("bob", "pw")}
    response = alice.fragment(b"def", 3, 6, headers=bob)
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert alice.fragment(b"def", 3, 6, headers=auth).status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"abcdef"


def test_other_requests_get_a_plain_401_then_reach_the_app(upload_dir: Path) -> None:
    test = webtest.TestApp(make(upload_dir))
    refused = test.get("/page", expect_errors=True)
    assert refused.status_int == 401
    assert "BITS-Packet-Type" not in refused.headers
    assert "WWW-Authenticate" in refused.headers
    allowed = test.get("/page", headers={"Authorization": basic("bob", "pw")})
    assert allowed.body == b"app GET /page "


def test_passwords_are_compared_in_constant_time_for_every_name(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timer (tests must not depend on timing): every attempt, whether the name exists or
    not, goes through hmac.compare_digest, so neither a password's prefix nor a name's
    existence changes the work done."""
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("bits_wsgi.wsgi.auth.hmac.compare_digest", spy)
    client = BitsClient(make(upload_dir), path="/up/f.bin")
    attempts = [("alice", "s3cret"), ("alice", "s3creX"), ("mallory", "s3cret"), ("", "x")]
    for name, password in attempts:
        client.ping(headers={"Authorization": basic(name, password)})
    assert len(compared) == len(attempts)
    assert all(len(given) == len(expected) for given, expected in compared[2:])


def test_unknown_and_known_names_cost_the_same_whatever_the_lengths(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown name's stand-in comparison must not take the attempt's length (that length
    then differs from a real password's): every comparison is of the same two lengths."""
    import hmac

    lengths: set[tuple[int, int]] = set()
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        lengths.add((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("bits_wsgi.wsgi.auth.hmac.compare_digest", spy)
    client = BitsClient(make(upload_dir), path="/up/f.bin")
    for name, password in [("alice", "s"), ("alice", "x" * 900), ("mallory", "y" * 700), ("", "")]:
        assert client.ping(headers={"Authorization": basic(name, password)}).status_int == 401
    assert client.ping(headers={"Authorization": basic("alice", "s3cret")}).status_int == 200
    assert len(lengths) == 1
