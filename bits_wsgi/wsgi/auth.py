"""HTTP Basic authentication for the standalone server (``bits-wsgi serve --user``).

It runs before everything else (PROTOCOL.md §2.3 step 1) and sets ``REMOTE_USER``, which binds
each session to its user. A BITS request without valid credentials gets a 401 Ack with
``WWW-Authenticate``, which Windows answers with credentials; other requests get a plain 401.
Basic authentication sends passwords in clear: put TLS in front.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from werkzeug.datastructures import Authorization

from ..errors import AuthenticationRequired
from ..protocol import BITS_METHOD, DEFAULT_ERROR_HEADERS, Ack

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class BasicAuth:
    def __init__(
        self,
        app: WSGIApplication,
        users: Mapping[str, str],
        *,
        realm: str = "BITS upload",
        error_headers: tuple[str, ...] = DEFAULT_ERROR_HEADERS,
    ) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self.app = app
        self._users = {name: _digest(password.encode("utf-8")) for name, password in users.items()}
        self._unknown = _digest(secrets.token_bytes(32))
        self._challenge = ("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"')
        self._error_headers = error_headers

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        user = self._authenticate(environ.get("HTTP_AUTHORIZATION"))
        if user is not None:
            environ["REMOTE_USER"] = user
            return self.app(environ, start_response)
        if _is_bits(environ):
            ack = replace(
                Ack.from_error(AuthenticationRequired()), extra_headers=(self._challenge,)
            )
            start_response(ack.status_line, ack.headers(self._error_headers))
            return []
        body = b"Authentication required.\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                self._challenge,
            ],
        )
        return [body]

    def _authenticate(self, header: str | None) -> str | None:
        credentials = Authorization.from_header(header)
        if credentials is None or credentials.type != "basic":
            return None
        name = credentials.username or ""
        given = _digest((credentials.password or "").encode("utf-8"))
        # Digests of one length for every attempt, and a comparison against a stand-in for
        # unknown names: neither a name's existence nor any length changes the work done.
        expected = self._users.get(name, self._unknown)
        if hmac.compare_digest(given, expected) and name in self._users:
            return name
        return None


def _digest(password: bytes) -> bytes:
    return hashlib.sha256(password).digest()


def _is_bits(environ: WSGIEnvironment) -> bool:
    method = environ.get("REQUEST_METHOD", "")
    override = str(environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "")).strip().upper()
    return method == BITS_METHOD or (method == "POST" and override == BITS_METHOD)
