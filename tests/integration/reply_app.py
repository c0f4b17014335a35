"""A server application for upload-reply tests, steered by the upload URL's query string.

The upload's query goes along with the notification (PROTOCOL.md §7.1), so a test uploading to
``/up/f.bin?status=500`` makes this application answer 500. Served in-process by
``bits-wsgi serve --app tests.integration.reply_app:application`` and over HTTP by a werkzeug
server on loopback.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    request = Request(environ)
    if not request.path.endswith("/notify"):
        return Response(b"the application's own page\n")(environ, start_response)
    args = request.args
    time.sleep(float(args.get("delay", "0")))
    status = int(args.get("status", "200"))
    if status != 200:
        return Response(b"refused", status=status)(environ, start_response)
    headers = {}
    if "copy" in args:
        headers["BITS-Copy-File-To-Destination"] = "yes"
    if "static" in args:
        headers["BITS-Static-Response-URL"] = args["static"]
    digest = hashlib.sha256()
    request_file = request.headers.get("BITS-Request-DataFile-Name")
    if request_file:  # by reference: read the upload, write the reply file
        with open(request_file, "rb") as data:
            digest = hashlib.file_digest(data, "sha256")
        reply = Path(request.headers["BITS-Response-DataFile-Name"])
        with open(reply, "wb") as out:
            out.write(b"by-reference " + digest.hexdigest().encode() + b"\n")
            with open(request_file, "rb") as data:
                shutil.copyfileobj(data, out)
        return Response(b"", headers=headers)(environ, start_response)
    stream = request.stream
    body = bytearray()
    while block := stream.read(1 << 20):
        digest.update(block)
        if "discard" not in args:
            body += block
    reply_body = b"by-value " + digest.hexdigest().encode() + b"\n" + bytes(body)
    return Response(reply_body, headers=headers)(environ, start_response)
