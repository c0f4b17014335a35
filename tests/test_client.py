"""The BITS client against a real HTTP server in this process (werkzeug, threaded, HTTP/1.1)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi import BasicAuth, BITSMiddleware
from bits_wsgi.client import Progress, ProgressPrinter, UploadClient, UploadError, describe

from .conftest import WSGI, fallback_app


class Recorder:
    """Wraps an app: records what each request looked like, can answer 503 a few times."""

    def __init__(self, app: WSGI) -> None:
        self.app = app
        self.requests: list[dict[str, str]] = []
        self.busy = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.requests.append(
            {
                "packet": environ.get("HTTP_BITS_PACKET_TYPE", environ["REQUEST_METHOD"]),
                "host": environ.get("HTTP_HOST", ""),
                "range": environ.get("HTTP_CONTENT_RANGE", ""),
            }
        )
        if self.busy and environ.get("HTTP_BITS_PACKET_TYPE") == "Fragment":
            self.busy -= 1
            environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            start_response(
                "503 Service Unavailable",
                [
                    ("BITS-Packet-Type", "Ack"),
                    ("BITS-Error-Code", "0x801901F7"),
                    ("Content-Length", "0"),
                ],
            )
            return []
        return self.app(environ, start_response)

    def ranges(self) -> list[str]:
        return [r["range"] for r in self.requests if r["packet"] == "Fragment"]


def no_sleep(seconds: float) -> None:
    del seconds


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_is_byte_exact_and_fragments_grow(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root"))
    port = serve(recorder)
    seen: list[Progress] = []
    client = UploadClient(
        f"http://127.0.0.1:{port}/d/f.bin", fragment_size=64 * 1024, progress=seen.append
    )
    result = client.upload(source)
    assert sha(tmp_path / "root" / "d" / "f.bin") == sha(source)
    assert result.size == source.stat().st_size and result.restarts == 0
    sizes = [
        int(r.split("-")[1].split("/")[0]) - int(r.split()[1].split("-")[0]) + 1
        for r in recorder.ranges()
    ]
    assert sizes[0] == 64 * 1024 and max(sizes) > 64 * 1024  # grows after successes
    assert seen[-1].sent == seen[-1].total
    assert [r["packet"] for r in recorder.requests][-1] == "Close-Session"


def test_413_shrinks_fragments(tmp_path: Path, source: Path, serve: Callable[[WSGI], int]) -> None:
    app = BITSMiddleware(fallback_app, tmp_path / "root", max_fragment_size=100 * 1024)
    port = serve(app)
    client = UploadClient(f"http://127.0.0.1:{port}/f.bin", fragment_size=1024 * 1024)
    client.upload(source)
    assert sha(tmp_path / "root" / "f.bin") == sha(source)
    assert client.fragment_size <= 100 * 1024


def test_retries_503_with_backoff(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root"))
    recorder.busy = 3
    port = serve(recorder)
    sleeps: list[float] = []
    UploadClient(f"http://127.0.0.1:{port}/f.bin", sleep=sleeps.append).upload(source)
    assert sha(tmp_path / "root" / "f.bin") == sha(source)
    assert len(sleeps) == 3 and sleeps[1] > sleeps[0] * 1.3 and sleeps[2] > sleeps[1] * 1.3


def test_gives_up_after_the_retries(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root"))
    recorder.busy = 100
    port = serve(recorder)
    client = UploadClient(f"http://127.0.0.1:{port}/f.bin", retries=2, sleep=no_sleep)
    with pytest.raises(UploadError, match="after 2 retries: 503 .*the server is busy") as failed:
        client.upload(source)
    assert failed.value.resumable


def test_resumes_across_runs_with_a_state_file(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root"))
    port = serve(recorder)
    state = tmp_path / "state.json"

    def interrupt(progress: Progress) -> None:
        if progress.sent >= 1024 * 1024:
            raise KeyboardInterrupt

    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(KeyboardInterrupt):
        UploadClient(
            url,
            fragment_size=256 * 1024,
            max_fragment_size=256 * 1024,
            state_file=state,
            progress=interrupt,
        ).upload(source)
    saved = json.loads(state.read_text())
    assert saved["offset"] == 1024 * 1024
    creates = sum(r["packet"] == "Create-Session" for r in recorder.requests)
    UploadClient(url, state_file=state).upload(source)
    assert sum(r["packet"] == "Create-Session" for r in recorder.requests) == creates
    assert recorder.ranges()[len(recorder.ranges()) - 1].endswith(f"/{source.stat().st_size}")
    resumed = [r for r in recorder.ranges() if r.startswith("bytes 1048576-")]
    assert resumed, "the second run starts where the first stopped"
    assert sha(tmp_path / "root" / "f.bin") == sha(source)
    assert not state.exists()


def test_resyncs_when_the_server_holds_less(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    port = serve(BITSMiddleware(fallback_app, tmp_path / "root"))
    url = f"http://127.0.0.1:{port}/f.bin"
    state = tmp_path / "state.json"

    def interrupt(progress: Progress) -> None:
        if progress.sent >= 1024 * 1024:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        UploadClient(url, state_file=state, progress=interrupt).upload(source)
    saved = json.loads(state.read_text())
    saved["offset"] = 2 * 1024 * 1024  # the client believes more than the server holds
    state.write_text(json.dumps(saved))
    UploadClient(url, state_file=state).upload(source)  # 416, then from the server's offset
    assert sha(tmp_path / "root" / "f.bin") == sha(source)


def test_restarts_when_the_session_is_gone(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root"))
    port = serve(recorder)
    url = f"http://127.0.0.1:{port}/f.bin"
    state = tmp_path / "state.json"
    stat = source.stat()
    state.write_text(
        json.dumps(
            {
                "url": url,
                "file": str(source.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "session_id": "{11111111-2222-3333-4444-555555555555}",
                "offset": 4096,
            }
        )
    )
    result = UploadClient(url, state_file=state).upload(source)
    assert result.restarts == 1
    assert sha(tmp_path / "root" / "f.bin") == sha(source)


def test_follows_host_id(tmp_path: Path, source: Path, serve: Callable[[WSGI], int]) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root", host_id="127.0.0.1"))
    port = serve(recorder)
    UploadClient(f"http://localhost:{port}/f.bin").upload(source)
    hosts = [(r["packet"], r["host"]) for r in recorder.requests]
    assert hosts[0] == ("Create-Session", f"localhost:{port}")
    assert hosts[1] == ("Ping", f"127.0.0.1:{port}")
    assert all(host == f"127.0.0.1:{port}" for _, host in hosts[1:])


def test_basic_auth(tmp_path: Path, source: Path, serve: Callable[[WSGI], int]) -> None:
    app = BasicAuth(BITSMiddleware(fallback_app, tmp_path / "root"), {"alice": "pw"})
    port = serve(app)
    url = f"http://127.0.0.1:{port}/f.bin"
    with pytest.raises(UploadError, match="401"):
        UploadClient(url, user="alice", password="wrong").upload(source)
    UploadClient(url, user="alice", password="pw").upload(source)
    assert sha(tmp_path / "root" / "f.bin") == sha(source)


def test_fatal_ack_is_an_error(tmp_path: Path, source: Path, serve: Callable[[WSGI], int]) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f.bin").write_bytes(b"exists")
    port = serve(BITSMiddleware(fallback_app, tmp_path / "root"))
    with pytest.raises(UploadError, match="403"):
        UploadClient(f"http://127.0.0.1:{port}/f.bin").upload(source)


def test_empty_file(tmp_path: Path, serve: Callable[[WSGI], int]) -> None:
    port = serve(BITSMiddleware(fallback_app, tmp_path / "root"))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    UploadClient(f"http://127.0.0.1:{port}/e.bin").upload(empty)
    assert (tmp_path / "root" / "e.bin").read_bytes() == b""


def test_upload_reply_downloads_the_reply(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    from bits_wsgi.notify import Reply, Upload

    def answer(upload: Upload) -> Reply:
        with upload.open() as data:
            return Reply(body=hashlib.sha256(data.read()).hexdigest().encode())

    app = BITSMiddleware(
        fallback_app, tmp_path / "root", notification_type="by-value", notification_url=answer
    )
    port = serve(app)
    reply = tmp_path / "reply.txt"
    result = UploadClient(f"http://127.0.0.1:{port}/f.bin").upload(source, reply_to=reply)
    assert reply.read_text() == sha(source)
    assert result.reply_url and result.reply_path == reply


def test_progress_lines() -> None:
    text = describe(Progress(sent=50 * 1024 * 1024, total=200 * 1024 * 1024, rate=25 * 1024 * 1024))
    assert text.strip() == "25.0%  50.0/200.0 MiB  25.0 MiB/s  ETA 0:00:06"
    plain = io.StringIO()
    printer = ProgressPrinter(plain)
    for sent in range(0, 101, 5):
        printer(Progress(sent=sent, total=100, rate=10.0))
    assert len(plain.getvalue().splitlines()) == 11  # every 10 %, not every update

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    bar = ProgressPrinter(tty, width=10)
    bar(Progress(sent=50, total=100, rate=10.0))
    bar(Progress(sent=100, total=100, rate=10.0))
    # each redraw returns to the line's start and clears it to its end
    assert tty.getvalue().startswith("\r\x1b[K[#####-----]")
    assert "\r\x1b[K[##########]" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
