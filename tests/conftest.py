"""Shared helpers: a BITS conversation over webtest, against a middleware built per test."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder

from bits_wsgi import BITSMiddleware

from .support.conversation import Conversation

pytest_plugins = ["tests.support.fixtures"]

WSGI = Callable[[dict[str, Any], Callable[..., Any]], Any]


def fallback_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Stands for the wrapped application: echoes what reached it."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    reply = f"app {environ['REQUEST_METHOD']} {environ['PATH_INFO']} ".encode() + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(reply)))])
    return [reply]


class BitsClient(Conversation):
    """Speaks BITS to a WSGI app through webtest, one packet per method."""

    def __init__(self, app: Any, path: str = "/f.bin", user: str | None = None) -> None:
        self.test = webtest.TestApp(app, lint=True)
        self.path = path
        self.user = user
        self.session_id: str | None = None

    def post(
        self, packet_type: str, headers: dict[str, str] | None = None, body: bytes = b"", **kw: Any
    ) -> webtest.TestResponse:
        sent = {"BITS-Packet-Type": packet_type}
        sent.update(headers or {})
        extra_environ = {"REMOTE_USER": self.user} if self.user else {}
        extra_environ.update(kw.pop("extra_environ", {}))
        return self.test.request(
            kw.pop("path", self.path),
            method="BITS_POST",
            headers=sent,
            body=body,
            expect_errors=True,
            environ=extra_environ,
            **kw,
        )

    def ping(self, **kw: Any) -> webtest.TestResponse:
        return self.post("Ping", **kw)


def call(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Call a WSGI app with exactly this environ (no test client adding headers)."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, dict(headers)

    b"".join(app(environ, start_response))
    return captured["status"], captured["headers"]


def raw_environ(**extra: Any) -> dict[str, Any]:
    environ = EnvironBuilder(path="/f.bin", method="BITS_POST").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.pop("CONTENT_TYPE", None)
    environ.update(extra)
    return environ


def error_of(response: webtest.TestResponse) -> tuple[int, str | None, str | None]:
    """(status, HRESULT, context) of an Ack; both error headers must agree."""
    code = response.headers.get("BITS-Error-Code")
    assert code == response.headers.get("BITS-Error")
    return response.status_int, code, response.headers.get("BITS-Error-Context")


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    return tmp_path / "uploads"


@pytest.fixture
def make_client(upload_dir: Path) -> Callable[..., BitsClient]:
    def make(path: str = "/f.bin", user: str | None = None, **options: Any) -> BitsClient:
        app = BITSMiddleware(fallback_app, upload_dir, **options)
        return BitsClient(app, path=path, user=user)

    return make


@pytest.fixture
def serve() -> Iterator[Callable[[WSGI], int]]:
    servers = []

    def start(app: WSGI) -> int:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return int(server.server_port)

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 99))
    return path
