"""`bits-wsgi upload` against `bits-wsgi serve`: 200 MB, a progress bar, a server crash."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ..support.ports import free_port
from .helpers import bits_serve

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def test_200_mb_upload_survives_a_server_crash(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as out:
        for _ in range(200):
            out.write(os.urandom(MiB))
    state = tmp_path / "state.json"
    root, log = tmp_path / "root", tmp_path / "server.log"
    port = free_port()
    primary, replica = pty.openpty()  # a terminal, so the client draws its progress bar
    with bits_serve(root, log, port=port) as server:
        client = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bits_wsgi",
                "upload",
                str(source),
                f"http://127.0.0.1:{port}/incoming/big.bin",
                "--state-file",
                str(state),
                "--retries",
                "12",
            ],
            stdout=subprocess.PIPE,
            stderr=replica,
            start_new_session=True,
        )
        os.close(replica)
        output = bytearray()
        reader = _read_terminal(primary, output)
        # let it get some way, then kill the whole server
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if json.loads(state.read_text())["offset"] > 60 * MiB:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        server.kill()
        time.sleep(1.0)
    with bits_serve(root, log, port=port):
        stdout, _ = client.communicate(timeout=300)
    reader.join(30)
    os.close(primary)
    assert client.returncode == 0, bytes(output).decode(errors="replace")[-2000:]
    assert b"uploaded 209715200 bytes" in stdout
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256((root / "incoming" / "big.bin").read_bytes()).hexdigest() == digest
    text = bytes(output).decode(errors="replace")
    # the bar redraws in place, clearing to the end of the line, and the retries while the
    # server was down are told on lines of their own
    assert "\r\x1b[K[" in text and "ETA" in text and "100.0%" in text
    retries = [line for line in text.split("\n") if "retrying in" in line]
    assert retries and all(" of 12)" in line for line in retries), text[-2000:]
    assert not state.exists()


def _upload_on_a_terminal(
    source: Path, url: str, state: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """`bits-wsgi upload` with its stderr on a pseudo-terminal; (process, the terminal's end)."""
    primary, replica = pty.openpty()
    command = [sys.executable, "-m", "bits_wsgi", "upload", str(source), url]
    client = subprocess.Popen(
        [*command, "--state-file", str(state)],
        stdout=subprocess.PIPE,
        stderr=replica,
        start_new_session=True,
    )
    os.close(replica)
    return client, primary


def _read_terminal(primary: int, output: bytearray) -> threading.Thread:
    def drain() -> None:  # a full terminal buffer would block the client
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                return
            if not chunk:
                return
            output.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(96 * MiB))
    state = tmp_path / "state.json"
    root, log = tmp_path / "root", tmp_path / "server.log"
    with bits_serve(root, log) as server:
        url = f"http://127.0.0.1:{server.port}/incoming/big.bin"
        client, primary = _upload_on_a_terminal(source, url, state)
        output = bytearray()
        reader = _read_terminal(primary, output)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if json.loads(state.read_text())["offset"] > 8 * MiB:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        client.send_signal(signal.SIGINT)  # what Ctrl-C sends
        stdout, _ = client.communicate(timeout=60)
        reader.join(30)
        os.close(primary)
        text = bytes(output).decode(errors="replace")
        assert client.returncode == 130, text[-2000:]
        assert "Traceback" not in text and stdout == b""
        last = text.rstrip().split("\n")[-1].strip()
        assert last == "bits-wsgi: interrupted; the same command resumes the upload"
        assert text.count("bits-wsgi:") == 1
        assert state.exists()

        again, primary = _upload_on_a_terminal(source, url, state)
        output = bytearray()
        reader = _read_terminal(primary, output)
        stdout, _ = again.communicate(timeout=300)
        reader.join(30)
        os.close(primary)
    text = bytes(output).decode(errors="replace")
    assert again.returncode == 0, text[-2000:]
    assert "resuming session {" in text
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256((root / "incoming" / "big.bin").read_bytes()).hexdigest() == digest
    assert not state.exists()


def test_an_error_is_one_line_in_words_on_a_terminal(tmp_path: Path) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(os.urandom(10_000))
    root = tmp_path / "root"
    (root / "reports").mkdir(parents=True)
    (root / "reports" / "report.pdf").write_bytes(b"already here")
    with bits_serve(root, tmp_path / "server.log") as server:
        url = f"http://127.0.0.1:{server.port}/reports/report.pdf"
        client, primary = _upload_on_a_terminal(source, url, tmp_path / "state.json")
        output = bytearray()
        reader = _read_terminal(primary, output)
        client.communicate(timeout=60)
        reader.join(30)
        os.close(primary)
    text = bytes(output).decode(errors="replace").strip()
    assert client.returncode == 1
    assert text == (
        "bits-wsgi: upload failed: Create-Session refused: 403 0x80070005 (E_ACCESSDENIED): "
        "the destination exists and the server does not overwrite"
    )
    assert not (tmp_path / "state.json").exists()
