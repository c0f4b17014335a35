"""A Flask application that also accepts BITS uploads under /uploads/.

    pip install flask bits-wsgi[serve]
    BITS_UPLOAD_DIR=./uploads gunicorn -k gthread --threads 8 examples.flask_app:app

Windows then uploads with, for example:

    Start-BitsTransfer -TransferType Upload -Source C:\\dump.dmp `
        -Destination http://server:8000/uploads/dump.dmp
"""

from __future__ import annotations

import os

from flask import Flask

from bits_wsgi import BITSMiddleware

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return "Flask answers here; BITS uploads go to /uploads/.\n"


app.wsgi_app = BITSMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    os.environ.get("BITS_UPLOAD_DIR", "./uploads"),
    prefix="/uploads/",
)
