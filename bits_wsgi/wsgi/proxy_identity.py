"""The identity a trusted proxy authenticated, from a request header that nobody else may set.

::

    from bits_wsgi.wsgi.proxy_identity import ProxyIdentity

    app = ProxyIdentity(BITSMiddleware(app, "/srv/uploads"), header="X-Remote-User",
                        proxies=["127.0.0.1"])

For a front end that authenticates and forwards, such as Apache httpd with mod_auth_gssapi
(``GssapiConnectionBound On``, NTLM through gss-ntlmssp) passing ``%{REMOTE_USER}s`` in a
header: examples/apache-negotiate.conf. Like Werkzeug's ``ProxyFix`` for ``X-Forwarded-*``, the
header is believed only from the configured proxies (addresses or networks, compared with
``REMOTE_ADDR``, the proxy's end of the connection); from anyone else it is removed unread, so
a client that reaches the server directly cannot name itself. A request that carries no trusted
identity gets 401, as from a server doing the authentication itself: the proxy answers its
clients' handshakes, so such a request came round the proxy or through a misconfigured one.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..protocol import DEFAULT_ERROR_HEADERS
from .auth import unauthorized

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("bits_wsgi.auth")

#: An identity longer than this is no principal name (Kerberos names run to a few hundred bytes).
MAX_IDENTITY = 1024
#: Seconds between two log lines about identity headers from addresses that may not send them.
REPORT_EVERY = 60.0


class ProxyIdentity:
    def __init__(
        self,
        app: WSGIApplication,
        *,
        header: str = "X-Remote-User",
        proxies: Iterable[str] = ("127.0.0.1", "::1"),
        challenge: str = "Negotiate",
        error_headers: tuple[str, ...] = DEFAULT_ERROR_HEADERS,
    ) -> None:
        self.app = app
        self.header = header
        self._key = "HTTP_" + header.upper().replace("-", "_")
        self.proxies = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)
        if not self.proxies:
            raise ValueError("ProxyIdentity needs the address of at least one proxy")
        self._challenge = ("WWW-Authenticate", challenge)
        self._errors = error_headers
        self._reported = float("-inf")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        value = environ.pop(self._key, None)  # the application never sees the header itself
        identity = str(value or "").strip()
        if not self._trusted(str(environ.get("REMOTE_ADDR") or "")):
            if identity:
                self._report_spoof(environ)
            identity = ""
        if identity and len(identity) <= MAX_IDENTITY and identity.isprintable():
            environ["REMOTE_USER"] = identity
            return self.app(environ, start_response)
        environ.pop("REMOTE_USER", None)
        return unauthorized(environ, start_response, self._challenge, self._errors)

    def _trusted(self, address: str) -> bool:
        try:
            peer = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(peer in network for network in self.proxies)

    def _report_spoof(self, environ: WSGIEnvironment) -> None:
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:  # at most a line a minute, whatever a crowd does
            self._reported = now
            log.warning(
                "%s from %s, which is no trusted proxy: ignored",
                self.header,
                environ.get("REMOTE_ADDR") or "?",
            )
