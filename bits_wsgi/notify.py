"""Server-application notifications of upload-reply mode (PROTOCOL.md §7, D19).

When an upload completes in a directory whose ``notification_type`` is not ``none``, the server
hands it to the application and waits for its answer. The application is reached one of three
ways, each a :class:`Target`:

* :class:`HttpTarget`: a real HTTP/1.1 POST to an absolute ``http(s)://`` URL;
* :class:`WsgiTarget`: a relative URL, called in-process on the wrapped WSGI application;
* :class:`CallableTarget`: a Python callable receiving an :class:`Upload` and returning a
  :class:`Reply`.

Bodies are streamed both ways: the upload from its data file, the reply into a staged file.
:func:`deliver` runs the target in a thread bounded by ``notification_timeout`` and turns every
failure into a :class:`~bits_wsgi.errors.BITSError` with context 0x7.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import unquote_to_bytes, urlsplit

from werkzeug.datastructures import Headers

from .errors import CONTEXT_APPLICATION, E_INVALIDARG, BITSError, http_error_hresult
from .protocol import MAX_URL_LENGTH

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

NotificationType = Literal["none", "by-reference", "by-value"]

#: MC-BUP caps URLs at 2,200 characters.
COPY_HEADER = "BITS-Copy-File-To-Destination"
STATIC_URL_HEADER = "BITS-Static-Response-URL"
#: Statuses the client reads as protocol signals: relayed as a 500 instead (§5.1).
_SIGNAL_STATUSES = frozenset({401, 407, 413, 416})
_CHUNK = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Upload:
    """A completed upload, as the server application sees it."""

    session_id: str
    owner: str
    original_url: str
    size: int
    notification_type: NotificationType
    data_path: Path
    #: By reference: where the application writes its reply (the directory exists).
    reply_path: Path | None = None

    def open(self) -> IO[bytes]:
        """The uploaded bytes, to be read in chunks."""
        return open(self.data_path, "rb")


@dataclass(frozen=True, kw_only=True)
class Reply:
    """What a callable application answers; the fields mean what the HTTP headers mean."""

    status: int = 200
    #: By value: the reply body (bytes, or an iterable of bytes, streamed to storage).
    body: bytes | Iterable[bytes] | None = None
    static_response_url: str | None = None
    copy_to_destination: bool = False


@dataclass(frozen=True, kw_only=True)
class Answer:
    """The application's successful answer, once checked."""

    static_url: str | None
    copy_to_destination: bool


@dataclass(kw_only=True)
class _Response:
    status: int
    headers: Headers = field(default_factory=Headers)


class Target:
    """One way of reaching the application. ``call`` writes any reply body to ``reply``."""

    def call(self, upload: Upload, query: str, reply: IO[bytes]) -> _Response:
        raise NotImplementedError


def notification_headers(upload: Upload) -> dict[str, str]:
    """The §7.2 request headers, without Content-Length."""
    headers = {"BITS-Original-Request-URL": upload.original_url}
    if upload.notification_type == "by-reference":
        headers["BITS-Request-DataFile-Name"] = str(upload.data_path)
        headers["BITS-Response-DataFile-Name"] = str(upload.reply_path)
    else:
        headers["Content-Type"] = "application/octet-stream"
    return headers


def with_query(target: str, query: str) -> str:
    """The upload URL's query goes along: ``?`` or, if the target has one, ``&`` (D19)."""
    if not query:
        return target
    return f"{target}{'&' if '?' in target else '?'}{query}"


class HttpTarget(Target):
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        # Longer than deliver()'s bound, so a slow application is a 408, not a socket error.
        self.timeout = timeout + 5

    def call(self, upload: Upload, query: str, reply: IO[bytes]) -> _Response:
        parts = urlsplit(with_query(self.url, query))
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.netloc, timeout=self.timeout, blocksize=_CHUNK)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": "bits_wsgi", "Accept": "*/*", **notification_headers(upload)}
        try:
            if upload.notification_type == "by-value":
                headers["Content-Length"] = str(upload.size)
                with upload.open() as body:
                    connection.request("POST", target, body=body, headers=headers)
            else:
                headers["Content-Length"] = "0"
                connection.request("POST", target, headers=headers)
            response = connection.getresponse()
            result = _Response(status=response.status, headers=Headers(response.getheaders()))
            # No Content-Length means "read to EOF", as in the IIS capture (§7.3).
            if response.status == 200 and upload.notification_type == "by-value":
                shutil.copyfileobj(response, reply, _CHUNK)
            return result
        finally:
            connection.close()


class WsgiTarget(Target):
    """A relative notification URL, dispatched in-process to the wrapped application."""

    def __init__(self, app: WSGIApplication, environ: Mapping[str, Any], target: str) -> None:
        self.app = app
        #: the notification URL resolved against the upload's path (RFC 3986)
        self.target = target
        # Only the server's and WSGI's own keys: no client credentials, cookies or headers.
        self.base = {
            key: environ[key]
            for key in (
                "SCRIPT_NAME",
                "SERVER_NAME",
                "SERVER_PORT",
                "SERVER_PROTOCOL",
                "wsgi.version",
                "wsgi.url_scheme",
                "wsgi.errors",
                "wsgi.multithread",
                "wsgi.multiprocess",
                "wsgi.run_once",
            )
            if key in environ
        }
        if "HTTP_HOST" in environ:
            self.base["HTTP_HOST"] = environ["HTTP_HOST"]

    def call(self, upload: Upload, query: str, reply: IO[bytes]) -> _Response:
        by_value = upload.notification_type == "by-value"
        parts = urlsplit(with_query(self.target, query))
        body: IO[bytes] = upload.open() if by_value else io.BytesIO(b"")
        environ: WSGIEnvironment = dict(self.base)
        environ.update(
            {
                "REQUEST_METHOD": "POST",
                # PATH_INFO is percent-decoded, its bytes read as latin-1 (PEP 3333)
                "PATH_INFO": unquote_to_bytes(parts.path).decode("latin-1"),
                "QUERY_STRING": parts.query,
                "CONTENT_LENGTH": str(upload.size if by_value else 0),
                "wsgi.input": body,
                "wsgi.input_terminated": True,
                "bits_wsgi.notification": True,
            }
        )
        for name, value in notification_headers(upload).items():
            if name == "Content-Type":
                environ["CONTENT_TYPE"] = value
            else:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        if upload.owner:
            environ["REMOTE_USER"] = upload.owner
        captured: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            captured["status"], captured["headers"] = status, headers
            return reply.write

        with body:
            iterable = self.app(environ, start_response)
            try:
                for chunk in iterable:
                    if chunk and by_value:
                        reply.write(chunk)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        if "status" not in captured:
            raise _NotHttp("the application never started a response")
        try:
            status = int(str(captured["status"]).split()[0])
        except ValueError:
            raise _NotHttp(f"status {captured['status']!r}") from None
        return _Response(status=status, headers=Headers(captured["headers"]))


class CallableTarget(Target):
    def __init__(self, function: Callable[[Upload], Reply]) -> None:
        self.function = function

    def call(self, upload: Upload, query: str, reply: IO[bytes]) -> _Response:
        answer = self.function(upload)
        if not isinstance(answer, Reply):
            raise _NotHttp(f"the callable returned {type(answer).__name__}, not a Reply")
        headers = Headers()
        if answer.static_response_url is not None:
            headers[STATIC_URL_HEADER] = answer.static_response_url
        if answer.copy_to_destination:
            headers[COPY_HEADER] = "1"
        if answer.status == 200 and upload.notification_type == "by-value":
            body = answer.body
            for chunk in [body] if isinstance(body, bytes) else body or ():
                reply.write(chunk)
        return _Response(status=answer.status, headers=headers)


class _NotHttp(Exception):
    """The application's answer cannot be read as an HTTP answer."""


def deliver(target: Target, upload: Upload, query: str, staged: Path, timeout: float) -> Answer:
    """Notify, bounded by ``timeout``; the reply body (by value) ends up in ``staged``.

    The target runs in its own thread, so a slow application costs at most ``timeout`` of the
    client's 5-minute response timer. A late result is discarded: the thread cleans up after
    itself, and nothing it writes reaches ``staged``.
    """
    work = staged.with_name(f".{staged.name}.{uuid.uuid4().hex}.tmp")
    outcome: dict[str, Any] = {}
    abandoned = threading.Event()

    def run() -> None:
        try:
            with open(work, "wb") as reply:
                outcome["response"] = target.call(upload, query, reply)
        except BaseException as exc:  # reported to the caller, whatever it is
            outcome["error"] = exc
        finally:
            if abandoned.is_set():
                with contextlib.suppress(FileNotFoundError):
                    work.unlink()

    thread = threading.Thread(target=run, name="bits-wsgi-notify", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        abandoned.set()
        raise application_error(408, "the application did not answer in time")
    try:
        response = _outcome(outcome)
        answer = _check(response)
        if upload.notification_type == "by-value" and answer.static_url is None:
            os.replace(work, staged)
        return answer
    finally:
        with contextlib.suppress(FileNotFoundError):
            work.unlink()


def _outcome(outcome: dict[str, Any]) -> _Response:
    error = outcome.get("error")
    if error is None:
        response: _Response = outcome["response"]
        return response
    if isinstance(error, _NotHttp | http.client.HTTPException | OSError):
        raise application_error(502, f"the application could not be reached: {error}")
    raise application_error(500, f"the application failed: {error!r}")


def _check(response: _Response) -> Answer:
    if response.status != 200:
        raise application_error(response.status, f"the application answered {response.status}")
    static_url = response.headers.get(STATIC_URL_HEADER)
    if static_url is not None and not is_valid_static_url(static_url):
        raise BITSError(
            f"invalid {STATIC_URL_HEADER}",
            status=400,
            hresult=E_INVALIDARG,
            context=CONTEXT_APPLICATION,
        )
    return Answer(static_url=static_url, copy_to_destination=COPY_HEADER in response.headers)


def application_error(status: int, message: str) -> BITSError:
    """The application's failure as an Ack (§5.1, rows with context 0x7)."""
    relayed = status
    if status < 200 or 200 < status < 300 or status in _SIGNAL_STATUSES or status > 599:
        relayed = 500
    return BITSError(
        message,
        status=relayed,
        hresult=http_error_hresult(status if 100 <= status <= 599 else 500),
        context=CONTEXT_APPLICATION,
    )


def is_valid_static_url(url: str) -> bool:
    if len(url) > MAX_URL_LENGTH or any(c.isspace() or not c.isprintable() for c in url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_notification_url(url: object) -> str | None:
    """A configuration problem with ``notification_url``, or None if it is usable."""
    if callable(url):
        return None
    if not isinstance(url, str) or not url:
        return "notification_url is required unless notification_type is 'none'"
    if len(url) > MAX_URL_LENGTH or any(c.isspace() for c in url):
        return f"notification_url must be at most {MAX_URL_LENGTH} characters, no whitespace"
    parts = urlsplit(url)
    if parts.scheme and (parts.scheme not in ("http", "https") or not parts.netloc):
        return "notification_url must be an absolute http(s) URL, a relative URL or a callable"
    if not parts.scheme and parts.netloc:
        return "notification_url must not be scheme-relative"
    return None
