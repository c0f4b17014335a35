"""What the client tells its user: errors in words, retries and resumptions as they happen,
and what it keeps on disk."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bits_wsgi import BITSMiddleware
from bits_wsgi.cli import main
from bits_wsgi.cli.upload import ABANDONED_AFTER, forget_abandoned
from bits_wsgi.client import UploadClient, UploadError
from bits_wsgi.client.acks import ReceivedAck
from bits_wsgi.client.words import in_words

from .conftest import WSGI, fallback_app
from .test_client import Recorder, no_sleep


def ack(status: int, code: str, context: str = "0x5") -> ReceivedAck:
    return ReceivedAck(
        status,
        {
            "bits-packet-type": "Ack",
            "bits-error-code": code,
            "bits-error-context": context,
        },
    )


@pytest.mark.parametrize(
    ("packet", "answer", "words"),
    [
        (
            "Create-Session",
            ack(403, "0x80070005"),
            "403 0x80070005 (E_ACCESSDENIED): the destination exists and the server does not "
            "overwrite",
        ),
        (
            "Create-Session",
            ack(501, "0x80070005"),
            "501 0x80070005 (E_ACCESSDENIED): no upload directory at this URL",
        ),
        (
            "Fragment",
            ack(404, "0x80190194", "0x7"),
            "404 0x80190194 (BG_E_HTTP_ERROR_404): the server application answered 404",
        ),
        ("Fragment", ack(500, "0x80070070"), "(ERROR_DISK_FULL): the server's disk is full"),
        ("Fragment", ack(500, "0x8020001F"), "(BG_E_SESSION_NOT_FOUND): the server no longer"),
        ("Fragment", ack(500, "0x80200020"), "(BG_E_TOO_LARGE): the file is larger than"),
        ("Create-Session", ack(401, "0x80190191"), "the server wants credentials"),
        (
            "Fragment",
            ReceivedAck(502, {"content-type": "text/html"}),
            "502: the answer is not the BITS server's",
        ),
    ],
)
def test_errors_in_words(packet: str, answer: ReceivedAck, words: str) -> None:
    assert words in in_words(packet, answer)


def test_the_cli_says_why_a_create_is_refused(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f.bin").write_bytes(b"exists")
    port = serve(BITSMiddleware(fallback_app, tmp_path / "root"))
    url = f"http://127.0.0.1:{port}/f.bin"
    state = tmp_path / "state.json"
    assert main(["upload", str(source), url, "--state-file", str(state), "--quiet"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "bits-wsgi: upload failed: Create-Session refused: 403 0x80070005 (E_ACCESSDENIED): "
        "the destination exists and the server does not overwrite"
    )


def test_a_refused_session_leaves_no_state_behind(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    port = serve(BITSMiddleware(fallback_app, tmp_path / "root", max_upload_size=1024))
    state = tmp_path / "state.json"
    client = UploadClient(f"http://127.0.0.1:{port}/f.bin", state_file=state)
    with pytest.raises(UploadError, match="BG_E_TOO_LARGE") as refused:
        client.upload(source)
    assert not refused.value.resumable
    assert not state.exists()


def test_an_upload_the_network_interrupts_keeps_its_state_and_says_it_resumes(
    tmp_path: Path, source: Path, serve: Callable[[WSGI], int]
) -> None:
    recorder = Recorder(BITSMiddleware(fallback_app, tmp_path / "root"))
    state = tmp_path / "state.json"
    heard: list[str] = []
    sent = 0

    def busy_after_two(environ: dict[str, object], start_response: Callable[..., object]) -> object:
        nonlocal sent
        if environ.get("HTTP_BITS_PACKET_TYPE") == "Fragment":
            sent += 1
            if sent == 3:
                recorder.busy = 100  # from the third fragment on, the server is busy
        return recorder(environ, start_response)

    port = serve(busy_after_two)
    url = f"http://127.0.0.1:{port}/f.bin"
    first = UploadClient(url, state_file=state, retries=2, sleep=no_sleep, notice=heard.append)
    first.fragment_size = first.max_fragment_size = 1024 * 1024
    with pytest.raises(UploadError, match="after 2 retries") as failed:
        first.upload(source)
    assert failed.value.resumable and state.exists()
    retries = [line for line in heard if "retrying in" in line]
    assert len(retries) == 2
    assert retries[0].startswith("Fragment: 503 0x801901F7 (BG_E_HTTP_ERROR_503): the server")
    assert retries[0].endswith("(1 of 2)") and retries[1].endswith("(2 of 2)")

    recorder.busy = 0
    again: list[str] = []
    UploadClient(url, state_file=state, notice=again.append).upload(source)
    assert again[0].startswith("resuming session {") and " at 2.0 MiB of 3.0 MiB" in again[0]
    assert (tmp_path / "root" / "f.bin").read_bytes() == source.read_bytes()
    assert not state.exists()


def test_state_files_of_abandoned_uploads_are_removed(tmp_path: Path) -> None:
    old, recent, other = tmp_path / "old.json", tmp_path / "recent.json", tmp_path / "notes.txt"
    for path in (old, recent, other):
        path.write_text("{}")
    long_ago = time.time() - ABANDONED_AFTER - 60
    os.utime(old, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    forget_abandoned(tmp_path)
    assert not old.exists() and recent.exists() and other.exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("bits-wsgi ")
