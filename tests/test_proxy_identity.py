"""ProxyIdentity: the identity header is believed from the configured proxies only."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from typing import Any

import pytest

from bits_wsgi.wsgi import proxy_identity
from bits_wsgi.wsgi.proxy_identity import ProxyIdentity


def seen(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [])
    header = environ.get("HTTP_X_REMOTE_USER")
    return [f"{environ.get('REMOTE_USER')}|{header}".encode()]


def call(app: ProxyIdentity, address: str, identity: str | None, **extra: Any) -> tuple[str, bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "BITS_POST",
        "HTTP_BITS_PACKET_TYPE": "Ping",
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(),
        "REMOTE_ADDR": address,
        **extra,
    }
    if identity is not None:
        environ["HTTP_X_REMOTE_USER"] = identity
    answer: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: answer.append(status)))
    return answer[0], body


def test_the_proxys_identity_is_the_requests_and_the_header_goes() -> None:
    app = ProxyIdentity(seen)
    assert call(app, "127.0.0.1", "HOST1$@EXAMPLE.COM") == ("200 OK", b"HOST1$@EXAMPLE.COM|None")
    assert call(app, "::1", "alice@EXAMPLE.COM") == ("200 OK", b"alice@EXAMPLE.COM|None")


def test_a_header_from_anyone_else_is_ignored_and_the_request_refused() -> None:
    app = ProxyIdentity(seen)
    status, body = call(app, "192.0.2.7", "administrator@EXAMPLE.COM")
    assert status.startswith("401") and body == b""
    # a REMOTE_USER the server itself may have set for that client does not survive either
    assert call(app, "192.0.2.7", None, REMOTE_USER="mallory")[0].startswith("401")


def test_networks_of_proxies() -> None:
    app = ProxyIdentity(seen, proxies=["10.1.0.0/16", "2001:db8::/32"])
    assert call(app, "10.1.2.3", "alice")[0] == "200 OK"
    assert call(app, "2001:db8::5", "alice")[0] == "200 OK"
    assert call(app, "10.2.0.1", "alice")[0].startswith("401")
    assert call(app, "127.0.0.1", "alice")[0].startswith("401")
    assert call(app, "not an address", "alice")[0].startswith("401")


@pytest.mark.parametrize("identity", [None, "", "   ", "a\nb", "x" * 2000])
def test_no_usable_identity_from_the_proxy_is_401(identity: str | None) -> None:
    assert call(ProxyIdentity(seen), "127.0.0.1", identity)[0].startswith("401")


def test_no_proxy_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least one proxy"):
        ProxyIdentity(seen, proxies=[])
    with pytest.raises(ValueError):
        ProxyIdentity(seen, proxies=["not-an-address"])


def test_spoofing_is_reported_at_most_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(proxy_identity.time, "monotonic", lambda: now[0])
    app = ProxyIdentity(seen)
    with caplog.at_level(logging.WARNING, logger="bits_wsgi.auth"):
        for _ in range(500):
            call(app, "192.0.2.7", "admin")
        now[0] += 61
        call(app, "192.0.2.8", "admin")
    lines = [r.getMessage() for r in caplog.records if r.name == "bits_wsgi.auth"]
    assert lines == [
        "X-Remote-User from 192.0.2.7, which is no trusted proxy: ignored",
        "X-Remote-User from 192.0.2.8, which is no trusted proxy: ignored",
    ]
