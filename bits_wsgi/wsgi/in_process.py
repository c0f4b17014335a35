"""The in-process notification target: a relative ``notification_url`` is called on the wrapped
WSGI application itself (PROTOCOL.md §7.1), with an environ built from the request's server keys
only. The middleware builds it and hands it to the server as a plain ``notify.Target``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

from werkzeug.datastructures import Headers

from ..notify import NotAnAnswer, TargetResponse, Upload, notification_headers, with_query

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment


class WsgiTarget:
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

    def __call__(self, upload: Upload, query: str, reply: IO[bytes]) -> TargetResponse:
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
            raise NotAnAnswer("the application never started a response")
        try:
            status = int(str(captured["status"]).split()[0])
        except ValueError:
            raise NotAnAnswer(f"status {captured['status']!r}") from None
        return TargetResponse(status=status, headers=Headers(captured["headers"]))
