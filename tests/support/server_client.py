"""A BITS conversation with an UploadServer itself, no WSGI: the packets the middleware would hand
over, and each Ack as the response a client would see (its status and headers).

It is a ``Conversation``, as ``BitsClient`` is, so a test of the server's session rules
reads the same with either; the middleware's own additions (dispatch, the envelope's order, the
session-id echo on errors, the body drain, the identity hook) are tested through WSGI in
tests/test_middleware.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from bits_wsgi import UploadDirectory, UploadServer
from bits_wsgi.backends import Backend, default_backend
from bits_wsgi.errors import BITSError
from bits_wsgi.paths import destination_key
from bits_wsgi.protocol import Ack, parse
from bits_wsgi.server import RequestInfo
from bits_wsgi.wsgi.body import BodyReader

from .conversation import Conversation


class AckResponse:
    """An Ack as the client receives it: ``status_int``, ``headers``, an empty ``body``."""

    def __init__(self, ack: Ack) -> None:
        self.ack = ack
        self.status_int = ack.status
        self.headers = Headers(ack.headers())
        self.body = b""


class ServerClient(Conversation):
    """Speaks BITS to an ``UploadServer``, one packet per method, as ``tests.conftest.BitsClient``
    does to a WSGI application."""

    def __init__(self, server: UploadServer, path: str = "/f.bin", user: str | None = None) -> None:
        self.server = server
        self.path = path
        self.user = user
        self.session_id: str | None = None

    def post(
        self,
        packet_type: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        path: str | None = None,
        content_length: int | None = None,
    ) -> AckResponse:
        """``content_length`` longer than ``body``: a client that went away mid-body."""
        sent = Headers({"BITS-Packet-Type": packet_type, **(headers or {})})
        length = len(body) if content_length is None else content_length
        sent["Content-Length"] = str(length)
        path = path or self.path
        try:
            packet = parse(sent)
            request = RequestInfo(
                identity=self.user or "",
                destination=destination_key(path[len(self.server.directory.prefix) :]),
                url=f"http://bits.test{path}",
            )
        except BITSError as error:
            return AckResponse(Ack.from_error(error))
        reader = BodyReader(io.BytesIO(body).read, length)
        return AckResponse(self.server.handle(packet, request, reader))


def new_server(upload_dir: Path, backend: Backend | None = None, **options: Any) -> UploadServer:
    """An UploadServer as the middleware builds one: the settings, the default backend."""
    directory = UploadDirectory(upload_dir=upload_dir, **options)
    return UploadServer(directory, backend or default_backend(upload_dir), sweep_interval=None)


@pytest.fixture
def make_server(upload_dir: Path) -> Callable[..., ServerClient]:
    """``make_server(path=..., user=..., **settings)``: a client of a new server on
    ``upload_dir``; clients of the same server share ``client.server``."""

    def make(path: str = "/f.bin", user: str | None = None, **options: Any) -> ServerClient:
        return ServerClient(new_server(upload_dir, **options), path=path, user=user)

    return make
