"""NegotiateAuth's rules with a stand-in security context: connection-bound identity, NTLM's two
legs, refusals, and the bound on what connections make it remember. The real Kerberos and NTLM
handshakes are in tests/integration/test_negotiate.py."""

from __future__ import annotations

import base64
import gc
import io
from collections.abc import Iterable
from typing import Any

import pytest

from bits_wsgi.wsgi.negotiate import NegotiateAuth, connection_of, machine_name


class Connection:
    """What a server hands the application as its connection object (a socket, a channel)."""


class StandIn:
    """A security context: ``b"alice"`` completes at once as alice@EXAMPLE.COM; ``b"ntlm-1"``
    asks for a second leg, which ``b"ntlm-2"`` completes as EXAMPLE\\HOST1$; anything else
    fails as GSSAPI would."""

    def __init__(self) -> None:
        self.complete = False
        self.client_principal: str | None = None
        self._legs: list[bytes] = []

    def step(self, token: bytes) -> bytes | None:
        self._legs.append(token)
        if token == b"alice":
            self.complete, self.client_principal = True, "alice@EXAMPLE.COM"
            return b"mutual"
        if token == b"ntlm-1":
            return b"challenge"
        if token == b"ntlm-2" and self._legs[:-1] == [b"ntlm-1"]:
            self.complete, self.client_principal = True, "EXAMPLE\\HOST1$"
            return None
        raise ValueError("GSSAPI: the ticket cannot be decrypted")


def seen(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(environ.get("REMOTE_USER")).encode()]


def call(
    app: NegotiateAuth,
    connection: object | None,
    token: bytes | None = None,
    *,
    method: str = "BITS_POST",
    raw: str | None = None,
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/up/f.bin",
        "HTTP_BITS_PACKET_TYPE": "Ping",
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(),
        "REMOTE_ADDR": "127.0.0.1",
    }
    if connection is not None:
        environ["gunicorn.socket"] = connection
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = "Negotiate " + base64.b64encode(token).decode()
    if raw is not None:
        environ["HTTP_AUTHORIZATION"] = raw
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body


@pytest.fixture
def app() -> NegotiateAuth:
    return NegotiateAuth(seen, acceptor=StandIn)


def test_the_connection_keeps_the_identity_its_handshake_established(app: NegotiateAuth) -> None:
    connection = Connection()
    status, headers, body = call(app, connection, b"alice")
    assert (status, body) == ("200 OK", b"alice@EXAMPLE.COM")
    assert headers["WWW-Authenticate"] == "Negotiate " + base64.b64encode(b"mutual").decode()
    # the packets after the Ping on that connection carry no Authorization (MC-BUP §2.2.4)
    for _ in range(3):
        status, headers, body = call(app, connection)
        assert (status, body) == ("200 OK", b"alice@EXAMPLE.COM")
        assert "WWW-Authenticate" not in headers


def test_another_connection_without_authorization_gets_401(app: NegotiateAuth) -> None:
    call(app, Connection(), b"alice")
    status, headers, _ = call(app, Connection())
    assert status.startswith("401")
    assert headers["WWW-Authenticate"] == "Negotiate"
    assert headers["BITS-Packet-Type"] == "Ack"  # a BITS Ack Windows answers with credentials
    assert headers["BITS-Error-Code"] == "0x80190191"


def test_without_a_connection_object_every_request_authenticates(app: NegotiateAuth) -> None:
    assert call(app, None, b"alice")[0] == "200 OK"
    assert call(app, None)[0].startswith("401")


def test_ntlm_completes_in_two_legs_on_one_connection(app: NegotiateAuth) -> None:
    connection = Connection()
    status, headers, _ = call(app, connection, b"ntlm-1")
    assert status.startswith("401")
    assert headers["WWW-Authenticate"] == "Negotiate " + base64.b64encode(b"challenge").decode()
    assert app.connections == 1  # the handshake half-way
    status, headers, body = call(app, connection, b"ntlm-2")
    assert (status, body) == ("200 OK", b"EXAMPLE\\HOST1$")
    assert "WWW-Authenticate" not in headers
    assert call(app, connection)[2] == b"EXAMPLE\\HOST1$"


def test_a_second_leg_on_another_connection_is_no_continuation(app: NegotiateAuth) -> None:
    call(app, Connection(), b"ntlm-1")
    assert call(app, Connection(), b"ntlm-2")[0].startswith("401")


@pytest.mark.parametrize(
    "raw",
    [
        "Negotiate !!!not-base64!!!",
        "Negotiate " + base64.b64encode(b"forged").decode(),
        "Negotiate " + "A" * 100_000,
    ],
)
def test_a_bad_token_gets_401_and_forgets_the_connection(app: NegotiateAuth, raw: str) -> None:
    connection = Connection()
    call(app, connection, b"alice")
    assert call(app, connection, raw=raw)[0].startswith("401")
    # a failed handshake leaves the connection without the identity it had
    assert call(app, connection)[0].startswith("401")


def test_a_refused_small_body_is_read_so_the_connection_can_go_on(app: NegotiateAuth) -> None:
    """gunicorn drops a keep-alive connection whose body went unread, without saying so."""
    body = io.BytesIO(b"x" * 5000)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "BITS_POST",
        "HTTP_BITS_PACKET_TYPE": "Fragment",
        "CONTENT_LENGTH": "5000",
        "wsgi.input": body,
        "gunicorn.socket": Connection(),
    }
    statuses: list[str] = []
    app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses[0].startswith("401")
    assert body.tell() == 5000


def test_other_requests_get_a_plain_401(app: NegotiateAuth) -> None:
    status, headers, body = call(app, Connection(), method="GET")
    assert status.startswith("401")
    assert headers["WWW-Authenticate"] == "Negotiate"
    assert body == b"Authentication required.\n"


def test_basic_credentials_are_no_negotiate(app: NegotiateAuth) -> None:
    basic = "Basic " + base64.b64encode(b"alice:secret").decode()
    assert call(app, Connection(), raw=basic)[0].startswith("401")


def test_machine_names_give_a_machine_one_identity_under_both_mechanisms() -> None:
    app = NegotiateAuth(seen, acceptor=StandIn, machine_names=True)
    assert call(app, Connection(), b"ntlm-1")[0].startswith("401")
    connection = Connection()
    call(app, connection, b"ntlm-1")
    assert call(app, connection, b"ntlm-2")[2] == b"HOST1"
    assert machine_name("HOST1$@EXAMPLE.COM") == "HOST1"
    assert machine_name("EXAMPLE\\host1$") == "HOST1"
    assert machine_name("alice@EXAMPLE.COM") == "alice@EXAMPLE.COM"
    assert machine_name("$") == "$"


def test_connection_state_goes_with_the_connection(app: NegotiateAuth) -> None:
    """10,000 connections that authenticate and leave leave nothing behind."""
    for _ in range(10_000):
        connection = Connection()
        assert call(app, connection, b"alice")[0] == "200 OK"
        assert call(app, connection)[0] == "200 OK"
        del connection
    gc.collect()
    assert app.connections == 0


def test_at_most_max_connections_are_remembered() -> None:
    app = NegotiateAuth(seen, acceptor=StandIn, max_connections=100)
    held = [Connection() for _ in range(150)]
    for connection in held:
        assert call(app, connection, b"alice")[0] == "200 OK"  # authenticated all the same
    assert app.connections == 100
    # the connections past the bound must authenticate each request; the others need not
    assert call(app, held[0])[0] == "200 OK"
    assert call(app, held[-1])[0].startswith("401")
    del held
    gc.collect()
    assert app.connections == 0


def test_connection_objects_of_each_server() -> None:
    class Channel:
        def check_client_disconnected(self) -> bool:
            return False

    channel = Channel()
    sock = Connection()
    assert connection_of({"gunicorn.socket": sock}) is sock
    assert connection_of({"werkzeug.socket": sock}) is sock
    assert connection_of({"waitress.client_disconnected": channel.check_client_disconnected}) is (
        channel
    )
    assert connection_of({}) is None
