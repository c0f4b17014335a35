"""Reply downloads (PROTOCOL.md §7.5): GET and HEAD of an upload-reply's reply, for its owner
only, with single byte ranges and a stable ETag, through Werkzeug's conditional responses."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import parse_range_header
from werkzeug.wrappers import Response
from werkzeug.wsgi import wrap_file

from ..server import ReplyUnavailable, UploadServer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def serve_reply(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    server: UploadServer,
    raw_session_id: str,
    identity: str,
) -> Iterable[bytes]:
    """GET and HEAD of a reply (PROTOCOL.md §7.5): owner only, single ranges, stable ETag."""
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        response = Response(status=405, headers={"Allow": "GET, HEAD"})
        return response(environ, start_response)
    try:
        path = server.reply_file(raw_session_id, identity)
        # closed by the response's wrap_file iterator, not here
        handle = open(path, "rb")  # noqa: SIM115
    except ReplyUnavailable as refused:
        return Response(status=refused.status)(environ, start_response)
    except FileNotFoundError:  # closed between the lookup and the open
        return Response(status=404)(environ, start_response)
    stat = os.fstat(handle.fileno())
    response = Response(
        wrap_file(environ, handle),
        mimetype="application/octet-stream",
        direct_passthrough=True,
    )
    response.set_etag(f"{raw_session_id.strip('{}').upper()}-{stat.st_size}-{stat.st_mtime_ns}")
    response.last_modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    response.content_length = stat.st_size
    try:
        response.make_conditional(
            _single_range_only(environ), accept_ranges=True, complete_length=stat.st_size
        )
    except RequestedRangeNotSatisfiable:
        response.close()
        unsatisfiable = Response(status=416, headers={"Accept-Ranges": "bytes"})
        unsatisfiable.headers["Content-Range"] = f"bytes */{stat.st_size}"
        return unsatisfiable(environ, start_response)
    return response(environ, start_response)


def _single_range_only(environ: WSGIEnvironment) -> WSGIEnvironment:
    """Several ranges, or a Range header that does not parse, get the whole reply (§7.5)."""
    value = environ.get("HTTP_RANGE")
    if value is None:
        return environ
    parsed = parse_range_header(value)
    if parsed is not None and len(parsed.ranges) == 1:
        return environ
    return {key: item for key, item in environ.items() if key != "HTTP_RANGE"}
