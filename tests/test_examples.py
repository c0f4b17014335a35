"""The examples work as their docstrings say (in-process; issue 4 runs them under gunicorn)."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import BitsClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str, upload_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("BITS_UPLOAD_DIR", str(upload_dir))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_flask_example_plain_and_reply_uploads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flask_app = load("flask_app", tmp_path, monkeypatch)
    wsgi = flask_app.app.wsgi_app
    data = os.urandom(5000)

    plain = BitsClient(flask_app.app, path="/uploads/logs/a.log")
    plain.upload(data)
    assert (tmp_path / "files" / "logs" / "a.log").read_bytes() == data

    reply = BitsClient(flask_app.app, path="/reply/dump.dmp")
    reply.upload(data)
    final = reply.fragment(data[-1000:], len(data) - 1000, len(data))
    url = final.headers["BITS-Reply-URL"]
    body = reply.test.get("/" + url.split("/", 3)[3]).body
    assert body.endswith(f"sha256 {hashlib.sha256(data).hexdigest()}\n".encode())
    assert b"received 5000 bytes for http://localhost/reply/dump.dmp" in body
    assert (tmp_path / "replied" / "dump.dmp").read_bytes() == data  # copy asked for

    assert reply.test.get("/").body.startswith(b"Flask answers here")
    # the notification view refuses anyone but the middleware
    assert reply.test.post("/reply/notify", b"x", expect_errors=True).status_int == 403
    assert wsgi is flask_app.bits
