"""A BITS upload client for Linux and macOS: the client side of the protocol, as Windows does it.

``bits-wsgi upload FILE URL`` uses it; so do our end-to-end tests and benchmarks::

    from bits_wsgi.client import UploadClient

    result = UploadClient("http://server:8000/uploads/dump.bin").upload("dump.bin")

What it does, after Windows (PROTOCOL.md §5.2): Create-Session, then fragments from the
server's offset; a 416 or a 200 whose received offset differs resynchronises to it; a 413 halves
the fragment size (never below 5 KB); ``0x8020001F`` (session not found) starts a new session
from byte 0; 503, 5xx and network errors are retried with exponential backoff; ``BITS-Host-Id``
sends the rest of the session to that host, falling back to the original one after
``BITS-Host-Id-Fallback-Timeout``; an upload-reply's reply is downloaded (resuming with byte
ranges) before Close-Session. With a state file, an interrupted upload resumes where it stopped
on the next run; ``notice`` hears of each retry, resumption and restart in words.

Longer than 350 lines because the client's whole retry, resynchronisation and Host-Id logic is
one state machine over one connection; its parts that stand alone (the Acks, their words, the
resume state, reply downloads) are modules of their own.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import SplitResult, urlsplit, urlunsplit

from ..protocol import PROTOCOL_GUID
from .acks import SESSION_NOT_FOUND, ReceivedAck, is_transient
from .errors import Transient, UploadError, raise_if_final, tls_context
from .negotiate import Negotiator
from .reply import MAX_REPLY_SIZE, ReplyDownload
from .state import ResumeState
from .words import in_words, reason

MiB = 1024 * 1024
MIN_FRAGMENT = 5 * 1024
DEFAULT_FRAGMENT = 1024 * 1024
MAX_FRAGMENT = 8 * 1024 * 1024
#: Fragment Acks in a row that may acknowledge no progress before the client gives up.
STALL_LIMIT = 16


@dataclass(frozen=True)
class Progress:
    sent: int
    total: int
    #: bytes per second over the upload so far
    rate: float


@dataclass(frozen=True)
class UploadResult:
    session_id: str
    size: int
    reply_url: str | None
    reply_path: Path | None
    restarts: int


class UploadClient:
    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        fragment_size: int = DEFAULT_FRAGMENT,
        max_fragment_size: int = MAX_FRAGMENT,
        retries: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        timeout: float = 60.0,
        state_file: str | os.PathLike[str] | None = None,
        progress: Callable[[Progress], None] | None = None,
        notice: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        stall_limit: int = STALL_LIMIT,
        max_reply_size: int = MAX_REPLY_SIZE,
        cafile: str | os.PathLike[str] | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        negotiate: bool = False,
        service: str = "HTTP",
    ) -> None:
        """``cafile``: trust the authorities in it instead of the system's for https;
        ``certfile`` (and ``keyfile``): the client certificate to present; ``negotiate``:
        authenticate each new connection with Kerberos (the ticket cache, or the keytab of
        ``KRB5_CLIENT_KTNAME``) for ``service``/host, as Windows does (:mod:`.negotiate`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        try:
            parts.port  # noqa: B018 - urllib checks the port only when asked
        except ValueError as exc:
            raise ValueError(f"invalid URL {url!r}: {exc}") from None
        self.url = url
        self._origin = parts
        self._host = parts.netloc
        self._target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self._auth = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self._auth = f"Basic {token}"
        self.fragment_size = max(MIN_FRAGMENT, min(fragment_size, max_fragment_size))
        self.max_fragment_size = max_fragment_size
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.state_file = Path(state_file) if state_file is not None else None
        self._state = ResumeState(self.state_file, url)
        self._progress = progress
        self._notice = notice or (lambda line: None)
        self._sleep = sleep
        self.stall_limit = stall_limit
        self.max_reply_size = max_reply_size
        self._tls = tls_context(cafile, certfile, keyfile) if parts.scheme == "https" else None
        self._connection: http.client.HTTPConnection | None = None
        self._negotiate = Negotiator(service) if negotiate else None
        #: the server keeps a connection's identity (else each request carries its own)
        self._connection_bound = True
        if self._negotiate is not None and user is not None:
            raise ValueError("Negotiate and Basic credentials exclude each other")
        self._host_id: str | None = None
        self._host_id_deadline = 0.0

    # -- public --------------------------------------------------------------------------------

    def upload(
        self, path: str | os.PathLike[str], reply_to: str | os.PathLike[str] | None = None
    ) -> UploadResult:
        """Upload the file; on success it is committed (or answered) and the session closed."""
        try:
            return self._upload(Path(path), reply_to)
        except UploadError as exc:
            if not exc.resumable:
                self._state.clear()  # the session cannot go on: nothing to resume
            raise
        finally:
            self._drop_connection()

    def _upload(self, source: Path, reply_to: str | os.PathLike[str] | None) -> UploadResult:
        stat = source.stat()
        total = stat.st_size
        restarts = 0
        started = time.monotonic()
        session_id, offset, host = self._state.load(source, stat)
        if host is not None and host != self._origin.netloc:
            self._host = host
        if session_id is not None:
            self._notice(
                f"resuming session {session_id} at {offset / MiB:,.1f} MiB"
                f" of {total / MiB:,.1f} MiB"
            )
        with open(source, "rb") as data:
            while True:
                if session_id is None:
                    session_id = self._create()
                    offset = 0
                    self._state.save(source, stat, session_id, offset, self._host)
                try:
                    final = self._send_all(data, session_id, offset, total, source, stat, started)
                    break
                except _SessionLost:
                    restarts += 1
                    if restarts > 3:
                        raise UploadError("the server keeps losing the session") from None
                    self._notice("the server no longer knows the session: starting over")
                    session_id = None
            reply_url = final.get("BITS-Reply-URL")
            reply_path = None
            if reply_url and reply_to is not None:
                reply_path = Path(reply_to)
                self._download(reply_url, reply_path)
            self._close(session_id)
        self._state.clear()
        return UploadResult(
            session_id=session_id,
            size=total,
            reply_url=reply_url,
            reply_path=reply_path,
            restarts=restarts,
        )

    # -- packets -------------------------------------------------------------------------------

    def _create(self) -> str:
        self._host_id = None
        ack = self._packet("Create-Session", {"BITS-Supported-Protocols": PROTOCOL_GUID})
        if ack.status != 200:
            raise UploadError(f"Create-Session refused: {in_words('Create-Session', ack)}")
        session_id = ack.get("BITS-Session-Id")
        if not session_id:
            raise UploadError("Create-Session Ack without a session id")
        host_id = ack.get("BITS-Host-Id")
        if host_id:
            fallback = ack.get("BITS-Host-Id-Fallback-Timeout") or "86400"
            self._host_id = host_id
            self._host_id_deadline = float(fallback) if fallback.isdigit() else 86400.0
            self._switch_host(host_id)
            self._packet("Ping", {})
        return session_id

    def _send_all(
        self,
        data: IO[bytes],
        session_id: str,
        offset: int,
        total: int,
        source: Path,
        stat: os.stat_result,
        started: float,
    ) -> ReceivedAck:
        if total == 0:
            ack = self._fragment(session_id, b"", 0, 0)
            return self._check_fragment(ack, 0, 0)
        first_offset = offset
        stalls = 0
        while True:
            length = min(self.fragment_size, total - offset)
            body = os.pread(data.fileno(), length, offset)
            if len(body) != length:
                raise UploadError(f"{source} changed while uploading")
            ack = self._fragment(session_id, body, offset, total)
            if ack.status == 413:
                if self.fragment_size <= MIN_FRAGMENT:
                    raise UploadError("the server refuses even the smallest fragment")
                # and never grow back past what the server refused
                self.fragment_size = max(MIN_FRAGMENT, self.fragment_size // 2)
                self.max_fragment_size = self.fragment_size
                continue
            received = self._check_fragment(ack, offset, total).received
            assert received is not None
            stalls = stalls + 1 if received <= offset else 0
            if stalls >= self.stall_limit:
                raise UploadError(
                    f"the server acknowledged no progress {stalls} times in a row "
                    f"(stuck at byte {received} of {total})"
                )
            if ack.status == 200 and received == offset + length and length == self.fragment_size:
                self.fragment_size = min(self.max_fragment_size, self.fragment_size * 2)
            offset = received
            self._state.save(source, stat, session_id, offset, self._host)
            self._report(offset, total, offset - first_offset, started)
            if offset >= total:
                return ack

    def _check_fragment(self, ack: ReceivedAck, offset: int, total: int) -> ReceivedAck:
        if ack.status == 500 and ack.error == SESSION_NOT_FOUND:
            raise _SessionLost()
        if ack.status in (200, 416) and ack.received is not None:
            if not 0 <= ack.received <= total:
                raise UploadError(f"the server claims {ack.received} of {total} bytes")
            return ack
        raise UploadError(f"fragment at {offset} refused: {in_words('Fragment', ack)}")

    def _fragment(self, session_id: str, body: bytes, offset: int, total: int) -> ReceivedAck:
        content_range = f"bytes {offset}-{offset + len(body) - 1}/{total}" if body else "bytes */0"
        return self._packet(
            "Fragment",
            {"BITS-Session-Id": session_id, "Content-Range": content_range},
            body,
        )

    def _close(self, session_id: str) -> None:
        ack = self._packet("Close-Session", {"BITS-Session-Id": session_id})
        if ack.status != 200:
            raise UploadError(f"Close-Session refused: {in_words('Close-Session', ack)}")

    def _packet(self, packet_type: str, headers: dict[str, str], body: bytes = b"") -> ReceivedAck:
        """Send one packet, retrying transient failures with exponential backoff and jitter."""
        sent = {"BITS-Packet-Type": packet_type, "Content-Length": str(len(body)), **headers}
        sent["User-Agent"] = "bits_wsgi client"
        if self._auth:
            sent["Authorization"] = self._auth
        delay = self.backoff
        failing_since: float | None = None
        authenticated_again = False
        for attempt in range(self.retries + 1):
            try:
                ack = self._request("BITS_POST", sent, body)
                if ack.status == 401 and self._negotiate is not None and not authenticated_again:
                    # The server forgot the connection's identity: a new connection, a new Ping.
                    self._drop_connection()
                    authenticated_again = True
                    ack = self._request("BITS_POST", sent, body)
                if ack.status == 401:
                    raise UploadError(f"authentication failed: {in_words(packet_type, ack)}")
                if is_transient(packet_type, ack):
                    raise Transient(in_words(packet_type, ack))
                return ack
            except (Transient, OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise_if_final(exc)
                now = time.monotonic()
                failing_since = failing_since or now
                if self._host_id and now - failing_since > self._host_id_deadline:
                    self._switch_host(self._origin.netloc)  # Host-Id fallback
                    self._host_id = None
                if attempt == self.retries:
                    raise UploadError(
                        f"{packet_type} failed after {self.retries} retries: {reason(exc)}",
                        resumable=True,
                    ) from exc
                pause = min(self.max_backoff, delay) * random.uniform(0.8, 1.2)
                self._notice(
                    f"{packet_type}: {reason(exc)}; retrying in {pause:.1f} s"
                    f" ({attempt + 1} of {self.retries})"
                )
                self._sleep(pause)
                delay *= 2
        raise AssertionError("unreachable")

    def _request(self, method: str, headers: dict[str, str], body: bytes) -> ReceivedAck:
        connection = self._connect()
        if self._negotiate is not None and not self._connection_bound:
            headers = {**headers, "Authorization": self._negotiate.header(connection.host)}
        connection.request(method, self._target, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.will_close:
            self._drop_connection()
        return ReceivedAck(response.status, {k.lower(): v for k, v in response.getheaders()})

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            connection: http.client.HTTPConnection
            if self._tls is not None:
                connection = http.client.HTTPSConnection(
                    self._host, timeout=self.timeout, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(self._host, timeout=self.timeout)
            if self._negotiate is not None and self._connection_bound:
                try:
                    self._connection_bound = self._negotiate.authenticate(connection, self._target)
                except BaseException:
                    connection.close()
                    raise
            self._connection = connection
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _switch_host(self, host: str) -> None:
        """Host-Id names a host; the port and scheme stay those of the upload URL."""
        port = self._origin.port
        self._host = host if ":" in host or port is None else f"{host}:{port}"
        self._drop_connection()

    # -- upload-reply ----------------------------------------------------------------------------

    def _download(self, url: str, target: Path) -> None:
        """The reply, with credentials only for the upload's own origin."""
        authorization = self._auth if self._same_origin(urlsplit(url)) else None
        download = ReplyDownload(
            retries=self.retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            timeout=self.timeout,
            max_reply_size=self.max_reply_size,
            sleep=self._sleep,
            tls=self._tls,
        )
        download.fetch(url, target, authorization)

    def _same_origin(self, parts: SplitResult) -> bool:
        """The origin the user named (scheme, host, port), or the host a Host-Id moved the
        session to (the protocol's own move, with the same scheme and port)."""
        if parts.scheme != self._origin.scheme:
            return False  # never to another scheme, so never after a downgrade to http
        hosts = {_host_port(self._origin.scheme, self._origin.netloc)}
        if self._host_id:
            hosts.add(_host_port(self._origin.scheme, self._host))
        return _host_port(parts.scheme, parts.netloc) in hosts

    # -- state and progress ----------------------------------------------------------------------

    def _report(self, offset: int, total: int, sent_now: int, started: float) -> None:
        if self._progress is not None:
            elapsed = max(time.monotonic() - started, 1e-6)
            self._progress(Progress(sent=offset, total=total, rate=sent_now / elapsed))


def _host_port(scheme: str, netloc: str) -> tuple[str, int]:
    parts = urlsplit(f"{scheme}://{netloc}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    return (parts.hostname or "", port or (443 if scheme == "https" else 80))


class _SessionLost(Exception):
    """500 0x8020001F: the client starts over with a new session (MC-BUP §3.1.5.2.1)."""
