"""A Flask application that accepts BITS uploads, and answers upload-reply jobs itself.

    pip install flask 'bits-wsgi[serve]'
    BITS_UPLOAD_DIR=./uploads gunicorn -k gthread --threads 8 --timeout 300 examples.flask_app:app

Two upload directories:

- ``/uploads/``: plain uploads (``Start-BitsTransfer -TransferType Upload``), stored below
  ``$BITS_UPLOAD_DIR/files``;
- ``/reply/``: upload-reply jobs (``bitsadmin /create /upload-reply``). Each finished upload is
  posted by value to the Flask view ``/reply/notify``, in-process; the view's response body is
  the reply the client downloads, and its header asks for the upload to be kept as well.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from flask import Flask, abort, request

from bits_wsgi import BITSMiddleware, UploadDirectory
from bits_wsgi.events import SessionEvent

UPLOAD_DIR = os.environ.get("BITS_UPLOAD_DIR", "./uploads")

app = Flask(__name__)
log = logging.getLogger(__name__)


@app.get("/")
def index() -> str:
    return "Flask answers here; BITS uploads go to /uploads/ and /reply/.\n"


@app.post("/echo")
def echo() -> bytes:
    """Shows that ordinary requests reach Flask with their bodies intact."""
    return request.get_data()


@app.post("/reply/notify")
def answer_upload() -> tuple[bytes, int, dict[str, str]]:
    # Only the middleware can set this key: a remote client posting here is refused.
    if not request.environ.get("bits_wsgi.notification"):
        abort(403)
    digest = hashlib.sha256()
    size = 0
    while block := request.stream.read(1024 * 1024):  # streamed, never read whole
        digest.update(block)
        size += len(block)
    original = request.headers["BITS-Original-Request-URL"]
    reply = f"received {size} bytes for {original}\nsha256 {digest.hexdigest()}\n"
    return reply.encode(), 200, {"BITS-Copy-File-To-Destination": "true"}


bits = BITSMiddleware(
    app.wsgi_app,
    directories=[
        UploadDirectory(upload_dir=Path(UPLOAD_DIR, "files"), prefix="/uploads/"),
        UploadDirectory(
            upload_dir=Path(UPLOAD_DIR, "replied"),
            prefix="/reply/",
            notification_type="by-value",
            notification_url="notify",  # relative: /reply/<file> -> /reply/notify
        ),
    ],
)


@bits.events.on_upload_complete
def log_upload(event: SessionEvent) -> None:
    log.info(
        "%s uploaded %s (%d bytes, sha256 %s)",
        event.owner or "anonymous",
        event.destination,
        event.received,
        event.sha256,
    )


app.wsgi_app = bits  # type: ignore[method-assign]
