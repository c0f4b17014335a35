"""Upload-reply mode (PROTOCOL.md §7): notifying the server application, storing its answer's
reply, the reply URL, and who may download a reply.

The reply URL has one owner, ``paths.reply_location`` (and ``paths.reply_session`` reads it back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import paths
from ..backends.base import LocalFiles
from ..config import UploadDirectory
from ..errors import BITSError, InternalError, InvalidRequest
from ..escaping import client_text
from ..notify import Target, Upload
from ..protocol import MAX_URL_LENGTH, SessionId
from ..session import SessionRecord
from .notify import CallableTarget, HttpTarget, deliver

log = logging.getLogger("bits_wsgi")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What the server needs of the HTTP request: who sent it, and for which destination.

    ``identity`` is ``""`` for anonymous clients, who all share one identity (D8).
    ``base_url`` (scheme, host and script root) is where reply URLs point; a relative
    notification URL is reached through ``notification_target``, which only WSGI can build.
    """

    identity: str
    destination: str
    url: str
    base_url: str = ""
    notification_target: Target | None = None


class ReplyUnavailable(Exception):
    """A reply download that cannot be served; ``status`` is the plain HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Replies:
    def __init__(self, directory: UploadDirectory, files: LocalFiles) -> None:
        self.directory = directory
        self._files = files

    def notify(self, record: SessionRecord, request: RequestInfo) -> None:
        """Tell the application the upload is complete (§7.2) and keep its answer in
        ``record`` (the NotifyCache, §6.3): where the reply is and whether to copy the upload.
        A failure is a :class:`BITSError` (context 0x7) and keeps nothing of the attempt."""
        settings = self.directory
        reply_path = self._files.reply_path(record.id)
        by_reference = settings.notification_type == "by-reference"
        upload = Upload(
            session_id=SessionId(record.id).wire,
            owner=record.owner,
            original_url=record.url,
            size=record.received,
            notification_type=settings.notification_type,
            data_path=self._files.data_path(record.id),
            reply_path=reply_path if by_reference else None,
        )
        self._files.discard_reply(record.id)  # nothing of an earlier failed attempt is kept
        try:
            answer = deliver(
                self._target(request),
                upload,
                urlsplit(record.url).query,
                reply_path,
                settings.notification_timeout,
            )
        except BITSError as error:
            self._files.discard_reply(record.id)
            log.warning(
                "session %s: notification failed: %s", upload.session_id, client_text(str(error))
            )
            raise
        if answer.static_url is not None:
            self._files.discard_reply(record.id)  # a static reply is the application's, not ours
            record.reply_url = answer.static_url
        else:
            self._files.keep_reply(record.id)  # D22: no reply is an empty reply
            record.reply_url = self._reply_url(request, record.id)
        record.notified = True
        record.copy_to_destination = answer.copy_to_destination

    def _target(self, request: RequestInfo) -> Target:
        url = self.directory.notification_url
        if callable(url):
            return CallableTarget(url)
        if url is not None and urlsplit(url).scheme:
            return HttpTarget(url, self.directory.notification_timeout)
        if request.notification_target is None:
            raise InternalError("a relative notification URL is reachable only through WSGI")
        return request.notification_target

    def _reply_url(self, request: RequestInfo, session_id: str) -> str:
        """Absolute, on the host of the completing request (D20)."""
        url = (
            f"{request.base_url.rstrip('/')}{self.directory.prefix}"
            f"{paths.reply_location(session_id)}"
        )
        if len(url) > MAX_URL_LENGTH:
            raise InvalidRequest(f"reply URL longer than {MAX_URL_LENGTH} characters")
        return url

    def downloadable(self, record: SessionRecord, identity: str) -> Path:
        """The reply ``identity`` may download (§7.5), or :class:`ReplyUnavailable`."""
        if record.owner != identity:
            status = 401 if not identity else 403
            raise ReplyUnavailable(status, "the reply belongs to another identity")
        path = self._files.reply_path(record.id)
        if not record.notified or not path.is_file():
            raise ReplyUnavailable(404, "no stored reply")
        return path
