"""examples/curl-upload.sh, the curl recipe of docs/protocol.md, against a real serve."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .helpers import PROJECT, bits_serve

pytestmark = pytest.mark.integration


def test_the_curl_recipe_uploads_packet_by_packet(tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_bytes(os.urandom(70_000))
    root = tmp_path / "uploads"
    with bits_serve(root, tmp_path / "serve.log") as server:
        url = f"http://127.0.0.1:{server.port}/dir/notes.txt"
        done = subprocess.run(
            ["sh", str(PROJECT / "examples" / "curl-upload.sh"), str(source), url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    answers = done.stdout.lower()
    assert answers.count("http/1.1 200 ok") == 4, done.stdout
    assert answers.count("bits-packet-type: ack") == 4
    assert re.search(r"bits-session-id: \{[0-9a-f-]{36}\}", answers)
    assert "bits-received-content-range: 70000" in answers
    assert (root / "dir" / "notes.txt").read_bytes() == source.read_bytes()
