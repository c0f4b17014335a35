"""Client text never reaches a log line or a terminal raw (PROTOCOL.md §9.3, D23): a real
`bits-wsgi serve`, a destination holding a line separator and a bidi override, the real log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from .helpers import RawBits, bits_serve

pytestmark = pytest.mark.integration

#: U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR, U+202E RIGHT-TO-LEFT OVERRIDE, U+2066
NAME = "report\u2028FORGED committed\u2029x\u202egpj.exe\u2066"
FORBIDDEN = ["\u2028", "\u2029", "\u202e", "\u2066", "\x1b"]


def test_the_log_and_the_sessions_listing_escape_client_text(tmp_path: Path) -> None:
    root, log = tmp_path / "root", tmp_path / "server.log"
    with bits_serve(root, log) as server:
        client = RawBits(server.port, "/" + quote(NAME))
        assert client.create().status == 200
        assert client.fragment(b"12345", 0, 10).status == 200  # stays open for `sessions`
        finished = RawBits(server.port, "/done-" + quote(NAME))
        assert finished.create().status == 200
        assert finished.fragment(b"abc", 0, 3).status == 200
    assert (root / f"done-{NAME}").read_bytes() == b"abc"  # the name itself is allowed

    text = log.read_text(encoding="utf-8")
    assert "complete, committed" in text
    for char in FORBIDDEN:
        assert char not in text
    assert "\\u2028" in text and "\\u202e" in text  # escaped, not dropped

    listing = subprocess.run(
        [sys.executable, "-m", "bits_wsgi", "sessions", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "\\u202e" in listing
    for char in FORBIDDEN:
        assert char not in listing
