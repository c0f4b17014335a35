"""Windows Integrated Authentication: HTTP Negotiate (RFC 4559) with Kerberos or NTLM, bound to
the connection as IIS binds it.

::

    from bits_wsgi.wsgi.negotiate import NegotiateAuth

    app = NegotiateAuth(BITSMiddleware(flask_app, "/srv/uploads"), keytab="/etc/bits/http.keytab")

A domain-joined BITS job authenticates with its machine account (``HOST$@REALM``) and no
password. It does so once per TCP connection, on a body-less Ping or Create-Session (MC-BUP
§2.2.4), and sends its later packets on that connection without ``Authorization``: IIS keeps
the identity for the connection (NTLM always, Kerberos with ``authPersistNonNTLM``, its default).
This middleware does the same where the serving stack shows the connection to the application
and keeps it open (:func:`connection_of`: gunicorn, waitress; Werkzeug's development server shows
its socket but closes it after each response). Elsewhere each request must carry its own
Kerberos token, and NTLM, whose handshake spans two requests of one connection, cannot complete.

The identity set in ``REMOTE_USER`` owns the sessions (PROTOCOL.md §9.1): the principal as the
mechanism names it (``alice@EXAMPLE.COM``, ``EXAMPLE\\alice``), or with ``machine_names`` a
machine account's plain name (``HOST$@EXAMPLE.COM`` and ``EXAMPLE\\HOST$`` both become ``HOST``),
so that a machine's sessions are its own whichever mechanism it used.

Connection state lives in weak mappings keyed by the server's object for the connection: it goes
when the server drops the connection, and a new connection (from the same address too) never
finds an identity it did not establish itself. At most ``max_connections`` connections are
remembered at once; past that, new ones must authenticate every request.

Needs ``pip install 'bits-wsgi[negotiate]'`` (pyspnego with GSSAPI) and, for Kerberos, a keytab
with the ``HTTP/host`` service key; for NTLM, a credential file (``NTLM_USER_FILE`` lines
``DOMAIN:USER:PASSWORD``) — domain controllers' pass-through NTLM is not supported, see
docs/authentication.md.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..escaping import client_text
from ..protocol import DEFAULT_ERROR_HEADERS
from .auth import unauthorized

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("bits_wsgi.auth")

#: Connections whose identity (or unfinished NTLM handshake) is remembered at once, at most.
MAX_CONNECTIONS = 65536
#: A Negotiate token larger than this is refused unread (Kerberos tickets with a large PAC run to
#: tens of kilobytes; IIS's own header limit is 64 KiB).
MAX_TOKEN = 64 * 1024


def connection_of(environ: WSGIEnvironment) -> object | None:
    """The serving stack's object for the request's connection, if it shows one: the builtin
    server's connection, gunicorn's socket, Werkzeug's socket, waitress's channel (the owner of
    its disconnect check)."""
    for key in ("bits_wsgi.connection", "gunicorn.socket", "werkzeug.socket"):
        connection: object | None = environ.get(key)
        if connection is not None:
            return connection
    check = environ.get("waitress.client_disconnected")
    channel: object | None = getattr(check, "__self__", None)
    return channel


def machine_name(principal: str) -> str:
    """``HOST$@REALM`` or ``DOMAIN\\HOST$`` → ``HOST``; any other principal unchanged."""
    name = principal.rsplit("\\", 1)[-1].split("@", 1)[0] if principal else principal
    if name.endswith("$") and len(name) > 1:
        return name[:-1].upper()
    return principal


class NegotiateAuth:
    def __init__(
        self,
        app: WSGIApplication,
        *,
        keytab: str | os.PathLike[str] | None = None,
        ntlm_users: str | os.PathLike[str] | None = None,
        service: str = "HTTP",
        machine_names: bool = False,
        error_headers: tuple[str, ...] = DEFAULT_ERROR_HEADERS,
        max_connections: int = MAX_CONNECTIONS,
        acceptor: Callable[[], Any] | None = None,
    ) -> None:
        """``keytab`` and ``ntlm_users`` are set for the whole process (``KRB5_KTNAME`` and
        ``NTLM_USER_FILE``: GSSAPI and pyspnego read them there). ``acceptor`` makes the
        security context of a new handshake (tests); by default pyspnego's Negotiate acceptor
        for ``service``."""
        if acceptor is None:
            acceptor = _spnego_acceptor(service)
        if keytab is not None:
            os.environ["KRB5_KTNAME"] = f"FILE:{os.fspath(keytab)}"
        if ntlm_users is not None:
            os.environ["NTLM_USER_FILE"] = os.fspath(ntlm_users)
        self.app = app
        self._acceptor = acceptor
        self._name = machine_name if machine_names else (lambda principal: principal)
        self._errors = error_headers
        self.max_connections = max_connections
        self._identities: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._handshakes: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._guard = threading.Lock()

    @property
    def connections(self) -> int:
        """Connections remembered now: authenticated, or half-way through an NTLM handshake."""
        with self._guard:
            return len(self._identities) + len(self._handshakes)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        connection = connection_of(environ)
        scheme, _, data = str(environ.get("HTTP_AUTHORIZATION", "")).strip().partition(" ")
        if scheme.lower() == "negotiate":
            return self._handshake(environ, start_response, connection, data.strip())
        if connection is not None:
            with self._guard:
                identity = self._identities.get(connection)
            if identity is not None:
                return self._pass(environ, start_response, identity, None)
        return self._challenge(environ, start_response, None)

    def _handshake(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        connection: object | None,
        data: str,
    ) -> Iterable[bytes]:
        with self._guard:
            # A connection's unfinished handshake (NTLM's second leg) continues; anything else
            # starts anew, and any new handshake on the connection forgets its old identity.
            context = self._handshakes.pop(connection, None) if connection is not None else None
            if connection is not None:
                self._identities.pop(connection, None)
        try:
            if len(data) > MAX_TOKEN * 4 // 3 + 4:
                raise ValueError(f"a token of {len(data)} characters")
            token = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error) as exc:
            log.warning("Negotiate: unreadable token from %s: %s", _peer(environ), exc)
            return self._challenge(environ, start_response, None)
        if context is None:
            context = self._acceptor()
        try:
            answer = context.step(token)
        except Exception as exc:  # pyspnego's errors, and GSSAPI's beneath them
            # pyspnego 0.12 reports a ticket GSSAPI refused (replayed, expired, for another
            # key) as an AttributeError about the context's flags, without GSSAPI's reason.
            reason = (
                "GSSAPI refused the ticket (replayed, expired, or not for this service's key)"
                if isinstance(exc, AttributeError)
                else client_text(str(exc))[:300]
            )
            log.warning("Negotiate: authentication from %s failed: %s", _peer(environ), reason)
            return self._challenge(environ, start_response, None)
        if not context.complete:
            if connection is not None and self._room():
                with self._guard:
                    self._handshakes[connection] = context
            return self._challenge(environ, start_response, answer)
        identity = self._name(str(context.client_principal or ""))
        if not identity:
            log.warning("Negotiate: no principal from %s", _peer(environ))
            return self._challenge(environ, start_response, None)
        if connection is not None and self._room():
            with self._guard:
                self._identities[connection] = identity
        return self._pass(environ, start_response, identity, answer)

    def _room(self) -> bool:
        with self._guard:
            if len(self._identities) + len(self._handshakes) < self.max_connections:
                return True
        log.warning(
            "Negotiate: %d connections remembered, the most allowed: this one is not",
            self.max_connections,
        )
        return False

    def _pass(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        identity: str,
        answer: bytes | None,
    ) -> Iterable[bytes]:
        environ["REMOTE_USER"] = identity
        environ["AUTH_TYPE"] = "Negotiate"
        if not answer:
            return self.app(environ, start_response)
        mutual = ("WWW-Authenticate", "Negotiate " + base64.b64encode(answer).decode("ascii"))

        def with_token(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, mutual], exc_info)

        return self.app(environ, with_token)

    def _challenge(
        self, environ: WSGIEnvironment, start_response: StartResponse, answer: bytes | None
    ) -> Iterable[bytes]:
        value = "Negotiate"
        if answer:
            value += " " + base64.b64encode(answer).decode("ascii")
        return unauthorized(environ, start_response, ("WWW-Authenticate", value), self._errors)


def _spnego_acceptor(service: str) -> Callable[[], Any]:
    try:
        import spnego
    except ImportError as exc:
        raise ImportError(
            "Negotiate authentication needs pip install 'bits-wsgi[negotiate]'"
        ) from exc

    def acceptor() -> Any:
        return spnego.server(service=service, protocol="negotiate")

    return acceptor


def _peer(environ: WSGIEnvironment) -> str:
    return str(environ.get("REMOTE_ADDR") or "?")
