"""Upload-reply notifications as the application sees them (PROTOCOL.md §7, D19): what a
completed :class:`Upload` is, what a Python application answers (:class:`Reply`), the
request's headers, and the rules for notification and static reply URLs.

Plain values and rules only, so that the settings can use them: the targets that reach the
application and the bounded delivery are in ``server/notify.py`` (HTTP, a callable) and
``in_process.py`` (a relative URL, through WSGI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit

from werkzeug.datastructures import Headers

from .protocol import MAX_URL_LENGTH

NotificationType = Literal["none", "by-reference", "by-value"]

COPY_HEADER = "BITS-Copy-File-To-Destination"
STATIC_URL_HEADER = "BITS-Static-Response-URL"


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


@dataclass(kw_only=True)
class TargetResponse:
    """The application's answer, as a target read it: the status and the headers."""

    status: int
    headers: Headers = field(default_factory=Headers)


#: One way of reaching the application: called with the upload, the upload URL's query and the
#: file the reply body goes to. The server's targets (HTTP, a Python callable) are in
#: ``server/notify.py``; the in-process one, which only WSGI can build, in ``in_process.py``.
Target = Callable[[Upload, str, IO[bytes]], TargetResponse]


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


class NotAnAnswer(Exception):
    """The application's answer cannot be read as an HTTP answer."""


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
