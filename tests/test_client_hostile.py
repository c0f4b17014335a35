"""`bits-wsgi upload` against a hostile or broken server (PROTOCOL.md §5.2; issue items 12–15):
credentials stay with their origin, a stale partial reply never joins a reply, a server that
acknowledges nothing or lies in its headers ends the upload with a clear error, and errors no
retry can fix fail at once."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from bits_wsgi import BasicAuth, BITSMiddleware
from bits_wsgi.client import UploadClient, UploadError
from bits_wsgi.notify import Reply, Upload
from bits_wsgi.protocol import PROTOCOL_GUID

from .conftest import fallback_app
from .test_client import WSGI, no_sleep

REPLY = b"the application's reply\n" * 100


class ReplyHost:
    """A plain HTTP server for a static reply URL: records each request's headers."""

    def __init__(self, body: bytes = REPLY, refuse_ranges: bool = False) -> None:
        self.body = body
        self.refuse_ranges = refuse_ranges
        self.seen: list[dict[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.seen.append({k: str(v) for k, v in environ.items() if k.startswith("HTTP_")})
        if self.refuse_ranges and "HTTP_RANGE" in environ:
            start_response("416 Range Not Satisfiable", [("Content-Length", "0")])
            return []
        start_response("200 OK", [("Content-Length", str(len(self.body))), ("ETag", '"reply-v1"')])
        return [self.body]


def bits_with_reply(root: Path, reply: Reply) -> WSGI:
    """An upload-reply server whose application answers ``reply``, for alice (Basic auth)."""

    def answer(upload: Upload) -> Reply:
        return reply

    app = BITSMiddleware(fallback_app, root, notification_type="by-value", notification_url=answer)
    return BasicAuth(app, {"alice": "pw"})


def bits_with_static_reply(root: Path, reply_url: str) -> WSGI:
    return bits_with_reply(root, Reply(static_response_url=reply_url))


# -- 12: credentials go only to the origin the user named ----------------------------------------


def test_credentials_never_go_to_a_reply_url_elsewhere(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    elsewhere = ReplyHost()
    other = serve(elsewhere)
    port = serve(bits_with_static_reply(tmp_path / "root", f"http://127.0.0.1:{other}/r.bin"))
    reply = tmp_path / "reply.bin"
    client = UploadClient(f"http://127.0.0.1:{port}/f.bin", user="alice", password="pw")
    client.upload(source, reply_to=reply)
    assert reply.read_bytes() == REPLY
    assert len(elsewhere.seen) == 1
    assert "HTTP_AUTHORIZATION" not in elsewhere.seen[0]


def test_credentials_go_to_a_reply_url_of_the_same_origin(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    """The server's own reply URL needs them: replies are served to their owner only."""
    port = serve(bits_with_reply(tmp_path / "root", Reply(body=REPLY)))
    reply = tmp_path / "reply.bin"
    UploadClient(f"http://127.0.0.1:{port}/f.bin", user="alice", password="pw").upload(
        source, reply_to=reply
    )
    assert reply.read_bytes() == REPLY


@pytest.mark.parametrize(
    ("reply_url", "same"),
    [
        ("https://uploads.example:8443/r", True),
        ("https://UPLOADS.example:8443/other/path", True),
        ("http://uploads.example:8443/r", False),  # a downgrade to http
        ("https://uploads.example/r", False),  # another port
        ("https://evil.example:8443/r", False),
        ("https://uploads.example:8443@evil.example/r", False),
    ],
)
def test_what_counts_as_the_origin(reply_url: str, same: bool) -> None:
    client = UploadClient("https://uploads.example:8443/f.bin", user="alice", password="pw")
    assert client._same_origin(urlsplit(reply_url)) is same


# -- 13: a leftover REPLY.part never becomes part of a reply -------------------------------------


def test_a_leftover_partial_reply_from_another_job_is_not_resumed(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    port = serve(bits_with_reply(tmp_path / "root", Reply(body=REPLY)))
    reply = tmp_path / "reply.bin"
    Path(f"{reply}.part").write_bytes(b"ANOTHER JOB'S BYTES")  # no proof it is this reply
    client = UploadClient(f"http://127.0.0.1:{port}/f.bin", user="alice", password="pw")
    client.upload(source, reply_to=reply)
    assert reply.read_bytes() == REPLY


def test_a_416_is_not_done(tmp_path: Path, source: Path, serve: Callable[[WSGI], int]) -> None:
    host = ReplyHost(refuse_ranges=True)
    other = serve(host)
    url = f"http://127.0.0.1:{other}/r.bin"
    port = serve(bits_with_static_reply(tmp_path / "root", url))
    reply = tmp_path / "reply.bin"
    Path(f"{reply}.part").write_bytes(b"X" * 5000)  # longer than the reply
    Path(f"{reply}.part.etag").write_text(f'{{"url": "{url}", "etag": "\\"old\\""}}')
    client = UploadClient(
        f"http://127.0.0.1:{port}/f.bin", user="alice", password="pw", sleep=no_sleep
    )
    client.upload(source, reply_to=reply)
    assert reply.read_bytes() == REPLY
    assert host.seen[0]["HTTP_IF_RANGE"] == '"old"'  # resumed only with a proof...
    assert "HTTP_RANGE" not in host.seen[-1]  # ...and started over when it failed


def test_replies_have_a_size_bound(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    other = serve(ReplyHost(body=b"r" * (2 * 1024 * 1024)))
    port = serve(bits_with_static_reply(tmp_path / "root", f"http://127.0.0.1:{other}/r.bin"))
    client = UploadClient(
        f"http://127.0.0.1:{port}/f.bin", user="alice", password="pw", max_reply_size=1024 * 1024
    )
    with pytest.raises(UploadError, match="larger than"):
        client.upload(source, reply_to=tmp_path / "reply.bin")
    assert not (tmp_path / "reply.bin").exists()


# -- 14: a server that acknowledges no progress, or answers nonsense -----------------------------


class Liar:
    """Creates sessions, then answers every Fragment with 200 and the given Received."""

    def __init__(self, received: str) -> None:
        self.received = received
        self.fragments = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = [("BITS-Packet-Type", "Ack"), ("Content-Length", "0")]
        packet = environ.get("HTTP_BITS_PACKET_TYPE")
        if packet == "Create-Session":
            headers += [("BITS-Protocol", PROTOCOL_GUID), ("BITS-Session-Id", "{S}")]
        elif packet == "Fragment":
            self.fragments += 1
            if self.fragments > 500:  # a client that never gives up: end it here, not by a hang
                start_response("400 Bad Request", headers)
                return []
            headers.append(("BITS-Received-Content-Range", self.received))
        start_response("200 OK", headers)
        return []


def test_a_server_that_acknowledges_no_progress_ends_the_upload(
    source: Path, serve: Callable[[WSGI], int]
) -> None:
    liar = Liar("0")
    port = serve(liar)
    with pytest.raises(UploadError, match="no progress"):
        UploadClient(f"http://127.0.0.1:{port}/f.bin", sleep=no_sleep).upload(source)
    assert liar.fragments == 16


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b2", "12abc", "-1"])
def test_a_received_offset_that_is_not_ascii_digits_is_a_protocol_error(
    source: Path, serve: Callable[[WSGI], int], value: str
) -> None:
    port = serve(Liar(value))
    with pytest.raises(UploadError, match="BITS-Received-Content-Range"):
        UploadClient(f"http://127.0.0.1:{port}/f.bin", sleep=no_sleep).upload(source)


# -- 15: what no retry can fix fails at once -----------------------------------------------------


class Sleeps:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, seconds: float) -> None:
        self.count += 1


def test_an_invalid_url_fails_at_once(source: Path) -> None:
    sleeps = Sleeps()
    with pytest.raises(ValueError, match="invalid URL"):
        UploadClient("http://127.0.0.1:80x/f.bin", sleep=sleeps).upload(source)
    assert sleeps.count == 0


def test_the_cli_says_so_for_an_invalid_url(
    source: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bits_wsgi.cli import main

    assert main(["upload", str(source), "http://127.0.0.1:port/f.bin", "--quiet"]) == 2
    assert "invalid URL" in capsys.readouterr().err


def test_a_certificate_that_does_not_verify_fails_at_once(tmp_path: Path, source: Path) -> None:
    import threading

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = make_server(
        "127.0.0.1",
        0,
        BITSMiddleware(fallback_app, tmp_path / "root"),
        threaded=True,
        ssl_context=(str(cert), str(key)),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sleeps = Sleeps()
    try:
        url = f"https://127.0.0.1:{server.server_port}/f.bin"
        with pytest.raises(UploadError, match="certificate"):
            UploadClient(url, sleep=sleeps).upload(source)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert sleeps.count == 0


@pytest.mark.parametrize("status", [400, 404, 405, 429, 451])
def test_a_4xx_the_protocol_does_not_retry_fails_at_once(
    source: Path, serve: Callable[[WSGI], int], status: int
) -> None:
    def proxy(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response(f"{status} Refused", [("Content-Length", "0")])  # not an Ack
        return []

    sleeps = Sleeps()
    port = serve(proxy)
    with pytest.raises(UploadError, match=str(status)):
        UploadClient(f"http://127.0.0.1:{port}/f.bin", sleep=sleeps).upload(source)
    assert sleeps.count == 0


def test_408_is_still_retried(source: Path, serve: Callable[[WSGI], int]) -> None:
    sleeps = Sleeps()
    root = source.parent / "root"
    app = BITSMiddleware(fallback_app, root)
    remaining = [2]

    def wrapper(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if remaining[0]:
            remaining[0] -= 1
            start_response("408 Request Timeout", [("Content-Length", "0")])
            return []
        return app(environ, start_response)

    port = serve(wrapper)
    UploadClient(f"http://127.0.0.1:{port}/f.bin", sleep=sleeps).upload(source)
    assert sleeps.count == 2
    assert (
        hashlib.sha256((root / "f.bin").read_bytes()).digest()
        == hashlib.sha256(source.read_bytes()).digest()
    )
