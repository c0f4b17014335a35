"""BITSMiddleware: a Microsoft BITS upload server in front of any WSGI application.

Wrap the application; ``BITS_POST`` requests under an upload prefix become uploads, and every
other request reaches the application untouched, its body unread::

    from flask import Flask
    from bits_wsgi import BITSMiddleware

    app = Flask(__name__)
    app.wsgi_app = BITSMiddleware(app.wsgi_app, "/srv/uploads", prefix="/uploads/")

Several upload directories, each with its own root and settings, mirror IIS virtual directories::

    from bits_wsgi import UploadDirectory

    application = BITSMiddleware(
        application,
        directories=[
            UploadDirectory(upload_dir="/srv/dumps", prefix="/dumps/", max_upload_size=2**32),
            UploadDirectory(upload_dir="/srv/logs", prefix="/logs/", allow_overwrites=True),
        ],
    )

Completed uploads can be announced to webhooks, durably and signed
(``webhooks=Webhooks(urls=("https://ingest.internal/bits",), secret=...)``, docs/events.md).

Authentication belongs to an outer layer (a proxy, or :class:`bits_wsgi.wsgi.auth.BasicAuth`) that
sets ``REMOTE_USER``; sessions are bound to that identity. See docs/architecture.md for the flow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

from werkzeug.datastructures import EnvironHeaders
from werkzeug.wsgi import get_current_url

from .. import paths
from ..backends import Backend, default_backend
from ..config import UploadDirectory
from ..errors import BITSError, InternalError, NotUploadDirectory
from ..events import Events
from ..protocol import (
    BITS_METHOD,
    DEFAULT_ERROR_HEADERS,
    MAX_HEADER_VALUE,
    Ack,
    Envelope,
    PacketType,
    parse_envelope,
    parse_packet,
)
from ..server import RequestInfo, UploadServer
from ..webhooks import Webhooks
from .body import BodyReader
from .downloads import serve_reply
from .in_process import WsgiTarget
from .observe import PacketRecord
from .roots import check_quarantines, check_roots
from .status import StatusPage

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .metrics import PrometheusMetrics

log = logging.getLogger("bits_wsgi")

METHOD_OVERRIDE_KEY = "HTTP_X_HTTP_METHOD_OVERRIDE"


class BITSMiddleware:
    """WSGI middleware serving BITS uploads for one or several upload directories.

    :param app: the wrapped WSGI application; it receives every non-BITS request.
    :param upload_dir: root of a single upload directory; ``options`` are its settings (see
        :class:`~bits_wsgi.config.UploadDirectory`).
    :param directories: several upload directories instead (or as well).
    :param backend: the session backend of a single upload directory; by default the
        filesystem backend under ``upload_dir/BITS-Sessions``.
    :param metrics: counts packets and sessions
        (:class:`~bits_wsgi.wsgi.metrics.PrometheusMetrics`).
    :param metrics_path: with ``metrics``, the path where GET reads them (e.g. ``/metrics``);
        without it, expose ``metrics.registry`` yourself.
    :param status_path: where GET reads the operator's live status page (e.g.
        ``/bits-status/``; :mod:`bits_wsgi.wsgi.status`); none by default.
    :param status_users: with authentication in front (``REMOTE_USER``), the operators who may
        read it; without, only loopback clients may, or anyone with ``status_public``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        upload_dir: str | os.PathLike[str] | None = None,
        *,
        directories: Sequence[UploadDirectory] = (),
        backend: Backend | None = None,
        metrics: PrometheusMetrics | None = None,
        metrics_path: str | None = None,
        status_path: str | None = None,
        status_users: Collection[str] = (),
        status_public: bool = False,
        webhooks: Webhooks | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        configured = list(directories)
        if upload_dir is not None:
            configured.append(UploadDirectory(upload_dir=Path(upload_dir), **options))
        elif options:
            raise TypeError(f"settings without upload_dir: {sorted(options)}")
        if not configured:
            raise ValueError("BITSMiddleware needs upload_dir or directories")
        prefixes = [d.prefix for d in configured]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"duplicate upload prefixes: {prefixes}")
        check_roots(configured)
        check_quarantines(configured)
        if backend is not None and len(configured) != 1:
            raise ValueError("a backend instance serves exactly one upload directory")
        #: hooks the application registers: ``@middleware.events.on_upload_complete`` ...
        self.events = Events()
        # Longest prefix first, so /uploads/private/ wins over /uploads/.
        self.servers = sorted(
            (
                UploadServer(
                    d,
                    backend or default_backend(d.upload_dir),
                    events=self.events,
                    webhooks=webhooks,
                )
                for d in configured
            ),
            key=lambda server: len(server.directory.prefix),
            reverse=True,
        )
        if metrics_path is not None and (metrics is None or not metrics_path.startswith("/")):
            raise ValueError("metrics_path needs metrics and must start with /")
        self.metrics = metrics
        self.metrics_path = metrics_path
        if metrics is not None:
            metrics.attach(self.events)
            for server in self.servers:
                metrics.watch_disk(server.directory.prefix, server.disk_floor)
                if server.quotas is not None:
                    metrics.watch_quota(server.directory.prefix, server.quotas)
        if status_path is not None and not status_path.startswith("/"):
            raise ValueError("status_path must start with /")
        self.status_path = status_path
        self.status = (
            StatusPage(self.servers, users=status_users, public=status_public)
            if status_path is not None
            else None
        )
        self._overridable = any(s.directory.allow_method_override for s in self.servers)
        self._replies = any(s.directory.reply_mode for s in self.servers)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if method == BITS_METHOD:
            return self.handle_bits(environ, start_response, self.route(environ))
        if self._overridable and method == "POST" and _overrides_to_bits(environ):
            server = self.route(environ)
            if server is not None and server.directory.allow_method_override:
                return self.handle_bits(environ, start_response, server)
        if self.status is not None and environ.get("PATH_INFO") == self.status_path:
            return self.status(environ, start_response)
        if self.metrics_path is not None and environ.get("PATH_INFO") == self.metrics_path:
            assert self.metrics is not None  # checked in __init__
            return self.metrics.wsgi_app(environ, start_response)
        if self._replies:
            reply = self._reply_request(environ)
            if reply is not None:
                return self.serve_reply(environ, start_response, *reply)
        return self.app(environ, start_response)

    def _reply_request(self, environ: WSGIEnvironment) -> tuple[UploadServer, str] | None:
        """(directory, raw session id) if the path is a reply URL of a reply-mode directory."""
        server = self.route(environ)
        if server is None or not server.directory.reply_mode:
            return None
        session = paths.reply_session(environ.get("PATH_INFO", "")[len(server.directory.prefix) :])
        return None if session is None else (server, session)

    def serve_reply(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        server: UploadServer,
        raw_session_id: str,
    ) -> Iterable[bytes]:
        """GET and HEAD of a reply (PROTOCOL.md §7.5), for the identity of the request."""
        identity = self._identity(environ, server)
        return serve_reply(environ, start_response, server, raw_session_id, identity)

    def route(self, environ: WSGIEnvironment) -> UploadServer | None:
        """The upload directory whose prefix holds ``PATH_INFO`` (D10), if any."""
        path = environ.get("PATH_INFO", "") or "/"
        for server in self.servers:
            if path.startswith(server.directory.prefix):
                return server
        return None

    def handle_bits(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        server: UploadServer | None,
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        headers = EnvironHeaders(environ)
        envelope: Envelope | None = None
        body: BodyReader | None = None
        destination = identity = ""
        try:
            if server is None:  # §2.3 step 2
                raise NotUploadDirectory("BITS request outside every upload directory")
            envelope = parse_envelope(headers)  # steps 3-7
            body = BodyReader(environ["wsgi.input"].read, envelope.content_length)
            if envelope.packet_type is PacketType.PING:  # step 8
                ack = Ack()
            else:
                destination = self._destination(environ, server)  # step 9
                packet = parse_packet(envelope, headers)  # step 10
                request = self._request_info(environ, server, destination, envelope.packet_type)
                identity = request.identity
                ack = server.handle(packet, request, body)  # steps 11-12
        except BITSError as error:
            ack = Ack.from_error(error)
        except Exception:
            log.exception("internal error handling a BITS request")
            ack = Ack.from_error(InternalError())
        finally:
            if body is not None and server is not None:
                body.discard(server.directory.discard_limit)
        echo = _echoed_session_id(ack, envelope, headers)
        error_headers = server.directory.error_headers if server else DEFAULT_ERROR_HEADERS
        start_response(ack.status_line, ack.headers(error_headers, session_id=echo))
        if self.metrics is not None or self.status is not None or log.isEnabledFor(logging.INFO):
            if not identity:
                identity = str(environ.get("REMOTE_USER") or "")
            record = _packet_record(
                environ, envelope, headers, ack, destination, identity, started, echo
            )
            record.log()
            if self.metrics is not None:
                self.metrics.observe_packet(record)
            if self.status is not None:
                self.status.failures.note(record)
        return []

    def _destination(self, environ: WSGIEnvironment, server: UploadServer) -> str:
        """Step 9, the syntax rules. The backend consults the filesystem (or object store) at
        Create-Session and again at commit; later packets must name the session's own
        destination, so the syntax rules suffice there."""
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO")
        paths.check_target_length(str(target or ""))
        tail = environ.get("PATH_INFO", "")[len(server.directory.prefix) :]
        return paths.destination_key(tail)

    def _request_info(
        self, environ: WSGIEnvironment, server: UploadServer, destination: str, kind: PacketType
    ) -> RequestInfo:
        """Only what the packet can need: URLs are built for reply-mode Creates and fragments."""
        reply_mode = server.directory.reply_mode
        replying = reply_mode and kind is PacketType.FRAGMENT
        creating = reply_mode and kind is PacketType.CREATE_SESSION
        return RequestInfo(
            identity=self._identity(environ, server),
            destination=destination,
            url=get_current_url(environ) if creating else "",
            base_url=get_current_url(environ, root_only=True) if replying else "",
            notification_target=self._notification_target(environ, server) if replying else None,
        )

    def _notification_target(
        self, environ: WSGIEnvironment, server: UploadServer
    ) -> WsgiTarget | None:
        """A relative notification URL reaches the wrapped app in-process (PROTOCOL.md §7.1)."""
        url = server.directory.notification_url
        if not isinstance(url, str) or ":" in url.split("/", 1)[0]:
            return None
        here = quote(environ.get("PATH_INFO", "").encode("latin-1"), safe="/")
        return WsgiTarget(self.app, environ, urljoin(here, url))

    @staticmethod
    def _identity(environ: WSGIEnvironment, server: UploadServer) -> str:
        hook = server.directory.identity
        name = hook(environ) if hook is not None else environ.get("REMOTE_USER")
        return str(name) if name else ""


def _overrides_to_bits(environ: WSGIEnvironment) -> bool:
    return str(environ.get(METHOD_OVERRIDE_KEY, "")).strip().upper() == BITS_METHOD


def _echoed_session_id(ack: Ack, envelope: Envelope | None, headers: EnvironHeaders) -> str | None:
    """D5: Fragment, Close and Cancel Acks echo the request's session id, errors included:
    also when the envelope itself was refused (a gzip body, a Close with a body), so the packet
    type is read from its header when there is no envelope. None if the Ack names its own."""
    if ack.session_id is not None:
        return None
    if envelope is not None:
        packet_type = envelope.packet_type
    else:
        try:
            packet_type = PacketType.parse(headers.get("BITS-Packet-Type"))
        except BITSError:
            return None
    if not packet_type.carries_session_id:
        return None
    raw = headers.get("BITS-Session-Id")
    if not raw or len(raw) > MAX_HEADER_VALUE or not (raw.isascii() and raw.isprintable()):
        return None
    return raw


def _packet_record(
    environ: WSGIEnvironment,
    envelope: Envelope | None,
    headers: EnvironHeaders,
    ack: Ack,
    destination: str,
    identity: str,
    started: float,
    echoed_session_id: str | None,
) -> PacketRecord:
    return PacketRecord(
        remote=str(environ.get("REMOTE_ADDR") or ""),
        session=ack.session_id or echoed_session_id or headers.get("BITS-Session-Id", ""),
        identity=identity,
        packet=envelope.packet_type.value if envelope else headers.get("BITS-Packet-Type", ""),
        range=headers.get("Content-Range", ""),
        destination=destination,
        status=ack.status,
        code=ack.wire_error_code(),
        received=ack.received,
        body_bytes=envelope.content_length if envelope else 0,
        duration=time.perf_counter() - started,
    )
