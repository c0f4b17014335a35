"""HTTP Basic authentication for the standalone server (``bits-wsgi serve --user`` or
``--users-file``).

It runs before everything else (PROTOCOL.md §2.3 step 1) and sets ``REMOTE_USER``, which binds
each session to its user. A BITS request without valid credentials gets a 401 Ack with
``WWW-Authenticate``, which Windows answers with credentials; other requests get a plain 401.
Basic authentication sends passwords in clear: put TLS in front.

Users come as passwords (``users``) or as Werkzeug password hashes (``hashed``, from a users
file: no password on a command line or in ``ps``). A hash takes about 0.1 s to check, and a
BITS client sends its credentials with every packet, so a credential that checked out is
remembered for ``remember`` seconds, keyed by an HMAC under a secret of this process; at most
``MAX_REMEMBERED`` of them, the oldest forgotten first. A failed check is never remembered.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from werkzeug.datastructures import Authorization
from werkzeug.security import check_password_hash, generate_password_hash

from ..config import WINDOWS_MAX_FRAGMENT
from ..errors import AuthenticationRequired
from ..protocol import BITS_METHOD, DEFAULT_ERROR_HEADERS, Ack
from .body import BodyReader

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


#: Credentials remembered after their hash checked out, at most (each about 200 bytes).
MAX_REMEMBERED = 4096


class BasicAuth:
    def __init__(
        self,
        app: WSGIApplication,
        users: Mapping[str, str] | None = None,
        *,
        hashed: Mapping[str, str] | None = None,
        realm: str = "BITS upload",
        error_headers: tuple[str, ...] = DEFAULT_ERROR_HEADERS,
        remember: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        users, hashed = dict(users or {}), dict(hashed or {})
        if not users and not hashed:
            raise ValueError("BasicAuth needs at least one user")
        if set(users) & set(hashed):
            raise ValueError(f"users given twice: {sorted(set(users) & set(hashed))}")
        self.app = app
        self._users = {name: _digest(password.encode("utf-8")) for name, password in users.items()}
        self._unknown = _digest(secrets.token_bytes(32))
        self._hashed = hashed
        self._stand_in = generate_password_hash(secrets.token_hex(16))
        self._secret = secrets.token_bytes(32)
        self._remembered: OrderedDict[bytes, float] = OrderedDict()
        self._remember = remember
        self._clock = clock
        self._guard = threading.Lock()
        self._challenge = ("WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"')
        self._error_headers = error_headers

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        user = self._authenticate(environ.get("HTTP_AUTHORIZATION"))
        if user is not None:
            environ["REMOTE_USER"] = user
            return self.app(environ, start_response)
        return unauthorized(environ, start_response, self._challenge, self._error_headers)

    def _authenticate(self, header: str | None) -> str | None:
        credentials = Authorization.from_header(header)
        if credentials is None or credentials.type != "basic":
            return None
        name = credentials.username or ""
        if name in self._hashed or (self._hashed and name not in self._users):
            # an unknown name costs a hash check too: its answer takes as long as a known one's
            return name if self._check_hashed(name, credentials.password or "") else None
        given = _digest((credentials.password or "").encode("utf-8"))
        # Digests of one length for every attempt, and a comparison against a stand-in for
        # unknown names: neither a name's existence nor any length changes the work done.
        expected = self._users.get(name, self._unknown)
        if hmac.compare_digest(given, expected) and name in self._users:
            return name
        return None

    def _check_hashed(self, name: str, password: str) -> bool:
        key = hmac.digest(self._secret, f"{name}\0{password}".encode(), "sha256")
        now = self._clock()
        with self._guard:
            until = self._remembered.get(key)
            if until is not None and now < until:
                return True
        if name not in self._hashed:
            check_password_hash(self._stand_in, password)
            return False
        if not check_password_hash(self._hashed[name], password):
            return False
        with self._guard:
            self._remembered[key] = now + self._remember
            self._remembered.move_to_end(key)
            while len(self._remembered) > MAX_REMEMBERED:
                self._remembered.popitem(last=False)
        return True

    @property
    def remembered(self) -> int:
        """How many credentials are remembered now (bounded by ``MAX_REMEMBERED``)."""
        return len(self._remembered)


def read_users_file(path: str) -> dict[str, str]:
    """``NAME:HASH`` lines (``bits-wsgi passwd`` writes them); blank lines and ``#`` comments are
    skipped; a line that is not a Werkzeug hash is refused, so a password never counts as one."""
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            if not sep or not name or "$" not in hashed:
                raise ValueError(f"{path}:{number}: not NAME:HASH (bits-wsgi passwd writes them)")
            users[name] = hashed
    if not users:
        raise ValueError(f"{path}: no users")
    return users


def unauthorized(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    challenge: tuple[str, str],
    error_headers: tuple[str, ...] = DEFAULT_ERROR_HEADERS,
) -> Iterable[bytes]:
    """A 401 with ``challenge`` (a ``WWW-Authenticate`` header): a BITS Ack for a BITS request,
    which Windows answers with credentials, a short text for any other.

    A body up to the largest fragment Windows sends is read first, as the middleware reads the
    bodies it does not use (docs/protocol.md, "Unused bodies are drained"): Windows sends the
    whole fragment before it reads the answer, and a server that closes a connection with body
    bytes unread (gunicorn does, without a word) loses the 401 and the connection the
    credentials would follow on. A larger body is left for the server to refuse."""
    length = str(environ.get("CONTENT_LENGTH") or "0").strip()
    if length.isdigit() and 0 < int(length) <= WINDOWS_MAX_FRAGMENT and "wsgi.input" in environ:
        BodyReader(environ["wsgi.input"].read, int(length)).discard(WINDOWS_MAX_FRAGMENT)
    if _is_bits(environ):
        ack = replace(Ack.from_error(AuthenticationRequired()), extra_headers=(challenge,))
        start_response(ack.status_line, ack.headers(error_headers))
        return []
    body = b"Authentication required.\n"
    start_response(
        "401 Unauthorized",
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            challenge,
        ],
    )
    return [body]


def _digest(password: bytes) -> bytes:
    return hashlib.sha256(password).digest()


def _is_bits(environ: WSGIEnvironment) -> bool:
    method = environ.get("REQUEST_METHOD", "")
    override = str(environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "")).strip().upper()
    return method == BITS_METHOD or (method == "POST" and override == BITS_METHOD)
