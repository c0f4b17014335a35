"""`bits-wsgi upload --negotiate` as Windows does it: one handshake per connection, on a Ping, and
no Authorization on the packets after it. Real HTTP servers in this process (waitress, which keeps
connections open and shows them to the application; Werkzeug's development server, which closes
each after its response), NegotiateAuth with a stand-in security context on the server side and
a stand-in Kerberos client; the real Kerberos run is tests/integration/test_negotiate.py."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi import BITSMiddleware, NegotiateAuth
from bits_wsgi.client import UploadClient, UploadError

from .conftest import WSGI, fallback_app
from .test_negotiate_auth import StandIn


class KerberosStandIn:
    """What pyspnego's client gives: a first token, then the server's mutual token completes it."""

    def __init__(self, **options: Any) -> None:
        self.complete = False

    def step(self, answer: bytes | None = None) -> bytes:
        if answer is None:
            return b"alice"
        if answer != b"mutual":
            raise ValueError("the server did not prove itself")
        self.complete = True
        return b""


class FakeSpnego:
    client = KerberosStandIn


@pytest.fixture
def serve_waitress() -> Iterator[Callable[[WSGI], int]]:
    from waitress.server import create_server

    servers = []

    def start(app: WSGI) -> int:
        server = create_server(app, host="127.0.0.1", port=0, threads=2)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        return int(server.effective_port)

    yield start
    for server, thread in servers:
        # Closed in the server's own loop: closing its sockets from this thread while the loop
        # selects on them made select() fail with EBADF (seen once in a full run).
        def close_all(server: Any = server) -> None:
            for dispatcher in list(server._map.values()):
                dispatcher.close()

        server.trigger.pull_trigger(close_all)
        thread.join(10)
        server.task_dispatcher.shutdown()


def connection_id(environ: dict[str, Any]) -> int:
    socket = environ.get("werkzeug.socket")
    if socket is not None:
        return id(socket)
    return id(environ["waitress.client_disconnected"].__self__)


class Wire:
    """Records, per connection, each packet and whether it carried Authorization."""

    def __init__(self, app: WSGI) -> None:
        self.app = app
        self.seen: list[tuple[int, str, bool]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.seen.append(
            (
                connection_id(environ),
                environ.get("HTTP_BITS_PACKET_TYPE", ""),
                "HTTP_AUTHORIZATION" in environ,
            )
        )
        return self.app(environ, start_response)


def negotiating_client(url: str, **options: Any) -> UploadClient:
    client = UploadClient(url, negotiate=True, fragment_size=256 * 1024, **options)
    assert client._negotiate is not None
    client._negotiate._spnego = FakeSpnego
    return client


def test_one_handshake_per_connection_then_packets_without_authorization(
    tmp_path: Path, source: Path, serve_waitress: Callable[[WSGI], int]
) -> None:
    wire = Wire(NegotiateAuth(BITSMiddleware(fallback_app, tmp_path / "root"), acceptor=StandIn))
    port = serve_waitress(wire)
    negotiating_client(f"http://127.0.0.1:{port}/f.bin").upload(source)
    stored = (tmp_path / "root" / "f.bin").read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(source.read_bytes()).digest()
    by_connection: dict[int, list[tuple[str, bool]]] = {}
    for connection, packet, authorized in wire.seen:
        by_connection.setdefault(connection, []).append((packet, authorized))
    for packets in by_connection.values():
        assert packets[0] == ("Ping", True)
        assert all(not authorized for _, authorized in packets[1:])
    assert sum(len(packets) for packets in by_connection.values()) > 5  # fragments, not Pings


def test_where_the_server_closes_each_connection_each_request_authenticates(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    """Werkzeug's development server answers "Connection: close": no identity can outlive its
    request there, so after the Ping each packet carries a ticket of its own."""
    wire = Wire(NegotiateAuth(BITSMiddleware(fallback_app, tmp_path / "root"), acceptor=StandIn))
    port = serve(wire)
    negotiating_client(f"http://127.0.0.1:{port}/f.bin").upload(source)
    assert (tmp_path / "root" / "f.bin").read_bytes() == source.read_bytes()
    packets = [(packet, authorized) for _, packet, authorized in wire.seen]
    assert packets[0] == ("Ping", True)
    assert [packet for packet, _ in packets].count("Ping") == 1
    assert all(authorized for _, authorized in packets)


def test_a_server_that_forgets_the_connection_gets_one_new_handshake(
    tmp_path: Path, source: Path, serve_waitress: Callable[[WSGI], int]
) -> None:
    forgetful = NegotiateAuth(
        BITSMiddleware(fallback_app, tmp_path / "root"), acceptor=StandIn, max_connections=0
    )
    wire = Wire(forgetful)
    port = serve_waitress(wire)
    with pytest.raises(UploadError, match="authentication failed"):
        negotiating_client(f"http://127.0.0.1:{port}/f.bin", retries=0).upload(source)
    packets = [(packet, authorized) for _, packet, authorized in wire.seen]
    assert packets == [
        ("Ping", True),
        ("Create-Session", False),  # 401: the server kept no identity
        ("Ping", True),  # a new connection, a new handshake
        ("Create-Session", False),  # 401 again: the client gives up, in words
    ]
