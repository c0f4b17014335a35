"""Reaching the server application of upload-reply mode (PROTOCOL.md §7, D19).

The application is reached one of three ways, each a ``notify.Target`` (a callable):

* :class:`HttpTarget`: a real HTTP/1.1 POST to an absolute ``http(s)://`` URL;
* :class:`CallableTarget`: a Python callable receiving an ``Upload`` and returning a ``Reply``;
* a relative URL, called in-process on the wrapped WSGI application: built by the middleware
  (``in_process.WsgiTarget``), since only WSGI can.

Bodies are streamed both ways: the upload from its data file, the reply into a staged file.
:func:`deliver` runs the target in a thread bounded by ``notification_timeout`` and turns every
failure into a :class:`~bits_wsgi.errors.BITSError` with context 0x7.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from werkzeug.datastructures import Headers

from ..errors import CONTEXT_APPLICATION, E_INVALIDARG, BITSError, http_error_hresult
from ..notify import (
    COPY_HEADER,
    STATIC_URL_HEADER,
    NotAnAnswer,
    Reply,
    Target,
    TargetResponse,
    Upload,
    is_valid_static_url,
    notification_headers,
    with_query,
)

#: Statuses the client reads as protocol signals: relayed as a 500 instead (§5.1).
_SIGNAL_STATUSES = frozenset({401, 407, 413, 416})
_CHUNK = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Answer:
    """The application's successful answer, once checked."""

    static_url: str | None
    copy_to_destination: bool


class HttpTarget:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        # Longer than deliver()'s bound, so a slow application is a 408, not a socket error.
        self.timeout = timeout + 5

    def __call__(self, upload: Upload, query: str, reply: IO[bytes]) -> TargetResponse:
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
            result = TargetResponse(status=response.status, headers=Headers(response.getheaders()))
            # No Content-Length means "read to EOF", as in the IIS capture (§7.3).
            if response.status == 200 and upload.notification_type == "by-value":
                shutil.copyfileobj(response, reply, _CHUNK)
            return result
        finally:
            connection.close()


class CallableTarget:
    def __init__(self, function: Callable[[Upload], Reply]) -> None:
        self.function = function

    def __call__(self, upload: Upload, query: str, reply: IO[bytes]) -> TargetResponse:
        answer = self.function(upload)
        if not isinstance(answer, Reply):
            raise NotAnAnswer(f"the callable returned {type(answer).__name__}, not a Reply")
        headers = Headers()
        if answer.static_response_url is not None:
            headers[STATIC_URL_HEADER] = answer.static_response_url
        if answer.copy_to_destination:
            headers[COPY_HEADER] = "1"
        if answer.status == 200 and upload.notification_type == "by-value":
            body = answer.body
            for chunk in [body] if isinstance(body, bytes) else body or ():
                reply.write(chunk)
        return TargetResponse(status=answer.status, headers=headers)


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
                outcome["response"] = target(upload, query, reply)
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


def _outcome(outcome: dict[str, Any]) -> TargetResponse:
    error = outcome.get("error")
    if error is None:
        response: TargetResponse = outcome["response"]
        return response
    if isinstance(error, NotAnAnswer | http.client.HTTPException | OSError):
        raise application_error(502, f"the application could not be reached: {error}")
    raise application_error(500, f"the application failed: {error!r}")


def _check(response: TargetResponse) -> Answer:
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
