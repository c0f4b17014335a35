"""Windows Integrated Authentication for real: a MIT KDC on 127.0.0.1, `bits-wsgi serve --auth
negotiate` on waitress and gunicorn, Kerberos tickets of real principals, NTLM against a
credential file, and the Windows client's pattern of one handshake per connection."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support.kerberos import REALM, Realm, kerberos_realm
from ..support.ports import free_port
from .helpers import RawBits, bits_serve, owners

pytestmark = pytest.mark.integration

SERVERS = pytest.mark.parametrize("server_kind", ["builtin", "waitress", "gunicorn"])


@pytest.fixture(scope="module")
def realm() -> Iterator[Realm]:
    yield from kerberos_realm()


@pytest.fixture(scope="module")
def alice(realm: Realm) -> str:
    return realm.principal("alice")


@pytest.fixture(scope="module")
def bob(realm: Realm) -> str:
    return realm.principal("bob")


def token_for(realm: Realm, ccache: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    """A Kerberos context of the ccache's principal for HTTP/localhost, and its first token as
    an Authorization value."""
    import spnego

    for key, value in realm.client_env(ccache).items():
        monkeypatch.setenv(key, value)
    context = spnego.client(hostname="localhost", service="HTTP", protocol="kerberos")
    return context, "Negotiate " + base64.b64encode(context.step()).decode()


def ping(client: RawBits, authorization: str) -> Any:
    client.auth = authorization
    try:
        return client.post("Ping")
    finally:
        client.auth = None


def serve_negotiate(tmp_path: Path, realm: Realm, server: str, *extra: str) -> Any:
    env = {key: value for key, value in realm.env.items() if key != "KRB5CCNAME"}
    return bits_serve(
        tmp_path / "root",
        tmp_path / "server.log",
        "--auth",
        "negotiate",
        "--keytab",
        str(realm.keytab),
        *extra,
        port=free_port(),
        server=server,
        env=env,
    )


@SERVERS
def test_the_linux_client_uploads_with_its_kerberos_ticket(
    tmp_path: Path, realm: Realm, alice: str, server_kind: str
) -> None:
    source = tmp_path / "dump.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 777))
    with serve_negotiate(tmp_path, realm, server_kind) as server:
        url = f"http://localhost:{server.port}/fleet/dump.bin"
        uploaded = subprocess.run(
            [sys.executable, "-m", "bits_wsgi", "upload", "--negotiate", "--quiet"]
            + ["--fragment-size", "524288", "--state-file", str(tmp_path / "state.json")]
            + [str(source), url],
            capture_output=True,
            text=True,
            env={**os.environ, **realm.client_env(alice)},
            timeout=120,
        )
        assert uploaded.returncode == 0, uploaded.stderr
    committed = tmp_path / "root" / "fleet" / "dump.bin"
    digest = hashlib.sha256(committed.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    assert owners(tmp_path / "root") == {"fleet/dump.bin": f"alice@{REALM}"}


@SERVERS
def test_one_handshake_per_connection_as_windows_does(
    tmp_path: Path,
    realm: Realm,
    alice: str,
    bob: str,
    server_kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = os.urandom(300_000)
    with serve_negotiate(tmp_path, realm, server_kind) as server:
        client = RawBits(server.port, "/fleet/log.bin")
        context, authorization = token_for(realm, alice, monkeypatch)
        answer = ping(client, authorization)
        assert answer.status == 200
        # mutual authentication: the server proves it holds the service key
        scheme, _, token = answer.headers["WWW-Authenticate"].partition(" ")
        assert scheme == "Negotiate"
        context.step(base64.b64decode(token))
        assert context.complete
        # the packets after the Ping on that connection carry no Authorization (MC-BUP §2.2.4)
        assert client.create().status == 200
        assert client.fragment(data[:100_000], 0, len(data)).status == 200

        # the same session's next fragment on a new connection, without Authorization: 401
        stranger = RawBits(server.port, "/fleet/log.bin")
        stranger.session_id = client.session_id
        refused = stranger.fragment(data[100_000:200_000], 100_000, len(data))
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"] == "Negotiate"

        # another principal may not touch the session; it authenticates on the connection
        # that was just refused (the 401 drained the fragment, so the connection goes on)
        _, bobs = token_for(realm, bob, monkeypatch)
        assert ping(stranger, bobs).status == 200
        assert stranger.fragment(data[100_000:200_000], 100_000, len(data)).status == 403

        # the owner's connection goes on
        assert client.upload_from(data, 100_000, 100_000) == len(data)
        assert client.close().status == 200
    committed = tmp_path / "root" / "fleet" / "log.bin"
    assert committed.read_bytes() == data
    assert owners(tmp_path / "root") == {"fleet/log.bin": f"alice@{REALM}"}


def test_a_bad_replayed_or_expired_ticket_gets_401_and_changes_nothing(
    tmp_path: Path, realm: Realm, alice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    brief = Path(realm.k5.tmpdir) / "ccache-brief"
    realm.k5.run_kadminl(f"addprinc -pw pw-brief brief@{REALM}")
    realm.k5.kinit(f"brief@{REALM}", "pw-brief", flags=["-l", "2s", "-c", str(brief)])
    _, expiring = token_for(realm, str(brief), monkeypatch)
    _, once = token_for(realm, alice, monkeypatch)
    with serve_negotiate(tmp_path, realm, "waitress") as server:
        client = RawBits(server.port, "/fleet/x.bin")
        client.auth = "Negotiate " + base64.b64encode(b"\x60\x82 not a ticket").decode()
        assert client.create().status == 401
        client.auth = once
        assert client.create().status == 200  # the first use of a ticket's authenticator
        replay = RawBits(server.port, "/fleet/y.bin", auth=once)
        assert replay.create().status == 401  # the same authenticator again: a replay
        time.sleep(2 + 1 + 1)  # the ticket's life, the realm's clock skew, a margin
        late = RawBits(server.port, "/fleet/z.bin", auth=expiring)
        assert late.create().status == 401
    assert owners(tmp_path / "root") == {"fleet/x.bin": f"alice@{REALM}"}


def test_ntlm_and_kerberos_give_a_machine_one_identity(
    tmp_path: Path, realm: Realm, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spnego

    machine = realm.principal("host1$")
    users = tmp_path / "ntlm-users"
    users.write_text("KRBTEST:host1$:machine-secret\n")
    extra = ("--ntlm-users", str(users), "--machine-names")
    with serve_negotiate(tmp_path, realm, "waitress", *extra) as server:
        # NTLM: two legs on one connection, then packets without Authorization
        by_ntlm = RawBits(server.port, "/fleet/ntlm.bin")
        context = spnego.client("KRBTEST\\host1$", "machine-secret", protocol="ntlm")
        challenge = ping(by_ntlm, "Negotiate " + base64.b64encode(context.step()).decode())
        assert challenge.status == 401
        token = base64.b64decode(challenge.headers["WWW-Authenticate"].split(" ", 1)[1])
        answer = ping(by_ntlm, "Negotiate " + base64.b64encode(context.step(token)).decode())
        assert answer.status == 200
        assert by_ntlm.create().status == 200
        assert by_ntlm.fragment(b"n" * 5000, 0, 5000).status == 200

        wrong = RawBits(server.port, "/fleet/wrong.bin")
        bad = spnego.client("KRBTEST\\host1$", "not-the-secret", protocol="ntlm")
        challenge = ping(wrong, "Negotiate " + base64.b64encode(bad.step()).decode())
        token = base64.b64decode(challenge.headers["WWW-Authenticate"].split(" ", 1)[1])
        assert ping(wrong, "Negotiate " + base64.b64encode(bad.step(token)).decode()).status == 401
        assert wrong.create().status == 401

        # Kerberos as HOST1$@REALM: the same machine, the same owner
        by_kerberos = RawBits(server.port, "/fleet/kerberos.bin")
        _, authorization = token_for(realm, machine, monkeypatch)
        assert ping(by_kerberos, authorization).status == 200
        assert by_kerberos.create().status == 200
    assert owners(tmp_path / "root") == {"fleet/ntlm.bin": "HOST1", "fleet/kerberos.bin": "HOST1"}


def test_serve_refuses_negotiate_without_its_keytab(tmp_path: Path) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "bits_wsgi", "serve", str(tmp_path), "--auth", "negotiate"]
        + ["--keytab", str(tmp_path / "missing.keytab"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "missing.keytab: not a readable file" in refused.stderr
    assert "Traceback" not in refused.stderr
