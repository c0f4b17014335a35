"""`bits-wsgi serve --scan-yara RULES --quarantine-dir Q` with `bits-wsgi upload`: a matching
upload stops the client with the refusal in words and lands in quarantine; a clean one arrives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import bits_serve

pytestmark = pytest.mark.integration

RULES = 'rule evil_marker { strings: $m = "EVIL-MARKER" condition: $m }\n'


def upload(source: Path, url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bits_wsgi", "upload", str(source), url, "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_serve_scans_with_yara_and_quarantines(tmp_path: Path) -> None:
    rules, quarantine = tmp_path / "rules.yar", tmp_path / "quarantine"
    rules.write_text(RULES)
    evil, clean = tmp_path / "evil.bin", tmp_path / "clean.bin"
    evil.write_bytes(b"a" * 50_000 + b"EVIL-MARKER" + b"b" * 50_000)
    clean.write_bytes(b"c" * 100_000)
    root = tmp_path / "uploads"
    arguments = ["--scan-yara", str(rules), "--quarantine-dir", str(quarantine)]
    with bits_serve(root, tmp_path / "serve.log", *arguments) as server:
        base = f"http://127.0.0.1:{server.port}"
        refused = upload(evil, f"{base}/evil.bin")
        accepted = upload(clean, f"{base}/clean.bin")
    assert refused.returncode == 1
    assert "403 0x80070005 (E_ACCESSDENIED)" in refused.stderr
    assert "its scan refused the content" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert (root / "clean.bin").read_bytes() == clean.read_bytes()
    assert not (root / "evil.bin").exists()
    (quarantined,) = quarantine.glob("*.bin")
    assert quarantined.read_bytes() == evil.read_bytes()
    assert "refused by the scan" in (tmp_path / "serve.log").read_text()


def test_serve_refuses_a_scan_without_a_quarantine(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yar"
    rules.write_text(RULES)
    command = [sys.executable, "-m", "bits_wsgi", "serve", str(tmp_path / "up")]
    done = subprocess.run(
        [*command, "--scan-yara", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "a scanner needs quarantine_dir" in done.stderr
    assert "Traceback" not in done.stderr
