"""`bits-wsgi upload` against `bits-wsgi serve`: 200 MB, a progress bar, a server crash."""

from __future__ import annotations

import hashlib
import json
import os
import pty
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
    assert "\r[" in text and "ETA" in text and "100.0%" in text
    assert not state.exists()
