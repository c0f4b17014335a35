"""BasicAuth for `bits-wsgi serve --user`: step 1 of the validation order (PROTOCOL.md §2.3)."""

from __future__ import annotations

import io
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


@pytest.mark.parametrize(
    ("size", "read"), [(5000, 5000), (13_000_000, 13_000_000), (16 * 1024 * 1024 + 1, 0)]
)
def test_a_refused_body_is_read_up_to_the_largest_windows_fragment(
    upload_dir: Path, size: int, read: int
) -> None:
    """So that the 401 reaches Windows, which sends a whole fragment before it reads the
    answer, on a connection the credentials can follow on: gunicorn drops a keep-alive
    connection whose last body went unread, without a word. A larger body is left to the
    server to refuse (docs/protocol.md, "Unused bodies are drained")."""
    body = io.BytesIO(b"x" * size)
    environ = {
        "REQUEST_METHOD": "BITS_POST",
        "PATH_INFO": "/up/f.bin",
        "HTTP_BITS_PACKET_TYPE": "Fragment",
        "CONTENT_LENGTH": str(size),
        "wsgi.input": body,
    }
    statuses: list[str] = []
    make(upload_dir)(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses[0].startswith("401")
    assert body.tell() == read


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


# -- hashed passwords (serve --users-file) ---------------------------------------------------


def _hashed_app(upload_dir: Path, clock: list[float], **options: object) -> BasicAuth:
    from werkzeug.security import generate_password_hash

    return BasicAuth(
        BITSMiddleware(fallback_app, upload_dir, prefix="/up/"),
        hashed={"host1": generate_password_hash("s3cret", method="pbkdf2:sha256:1000")},
        clock=lambda: clock[0],
        **options,  # type: ignore[arg-type]
    )


def _checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the password-hash checks BasicAuth makes."""
    import bits_wsgi.wsgi.auth as auth

    calls: list[str] = []
    real = auth.check_password_hash

    def counted(pwhash: str, password: str) -> bool:
        calls.append(password)
        return real(pwhash, password)

    monkeypatch.setattr(auth, "check_password_hash", counted)
    return calls


def test_hashed_users_are_checked_once_then_remembered_for_a_while(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _checks(monkeypatch)
    clock = [1000.0]
    app = webtest.TestApp(_hashed_app(upload_dir, clock))
    for _ in range(3):
        app.get("/page", headers={"Authorization": basic("host1", "s3cret")}, status=200)
    assert calls == ["s3cret"]  # 200 from the app behind: authenticated, one hash check
    clock[0] += 301
    app.get("/page", headers={"Authorization": basic("host1", "s3cret")}, status=200)
    assert calls == ["s3cret", "s3cret"]  # remembered for 300 s only


def test_hashed_users_refuse_wrong_and_unknown_credentials_and_remember_no_failure(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _checks(monkeypatch)
    app = webtest.TestApp(_hashed_app(upload_dir, [0.0]))
    for name, password in (("host1", "wrong"), ("host1", "wrong"), ("nobody", "s3cret")):
        app.get("/page", headers={"Authorization": basic(name, password)}, status=401)
    # every failure costs a check, an unknown name as much as a known one
    assert calls == ["wrong", "wrong", "s3cret"]


def test_remembered_credentials_are_bounded(upload_dir: Path) -> None:
    from bits_wsgi.wsgi import auth

    auth_app = _hashed_app(upload_dir, [0.0])
    app = webtest.TestApp(auth_app)
    # the same user with the right password remembered once, whatever the traffic
    for _ in range(5):
        app.get("/page", headers={"Authorization": basic("host1", "s3cret")}, status=200)
    assert auth_app.remembered == 1
    original = auth.MAX_REMEMBERED
    try:
        auth.MAX_REMEMBERED = 2
        from werkzeug.security import generate_password_hash

        many = BasicAuth(
            fallback_app,
            hashed={
                f"h{n}": generate_password_hash("pw", method="pbkdf2:sha256:1000") for n in range(5)
            },
        )
        client = webtest.TestApp(many)
        for n in range(5):
            client.get("/page", headers={"Authorization": basic(f"h{n}", "pw")}, status=200)
        assert many.remembered == 2
    finally:
        auth.MAX_REMEMBERED = original


def test_a_users_file_holds_hashes_only(tmp_path: Path) -> None:
    from bits_wsgi.wsgi.auth import read_users_file

    good = tmp_path / "users"
    good.write_text("# operators\n\nhost1:pbkdf2:sha256:1000$salt$abc\n")
    assert read_users_file(str(good)) == {"host1": "pbkdf2:sha256:1000$salt$abc"}
    plain = tmp_path / "plain"
    plain.write_text("host1:s3cret\n")
    with pytest.raises(ValueError, match="not NAME:HASH"):
        read_users_file(str(plain))
