"""The scan gate: a refused upload is quarantined and never published, a clean one publishes,
a scanner that fails or hangs publishes nothing and the client is told to retry; with a real
YARA rule set and with a fake scanner command."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi import BITSMiddleware, UploadDirectory, UploadServer
from bits_wsgi.backends import FilesystemBackend
from bits_wsgi.scan import ScanFailed, Verdict
from bits_wsgi.server import scan_gate
from bits_wsgi.server.scanners import CommandScanner, YaraScanner
from bits_wsgi.webhooks import Webhooks

from .conftest import fallback_app
from .support.server_client import ServerClient

EVIL = b"clean bytes " * 100 + b"X5O!P%@AP-EVIL-MARKER" + b" more" * 100
CLEAN = b"nothing to see " * 200
RULES = """
rule evil_marker {
    strings: $marker = "EVIL-MARKER"
    condition: $marker
}
"""
#: exit 1 (refused) when the file holds the marker; hangs while a file "hang" exists beside it
FAKE_SCANNER = """#!/bin/sh
echo $$ > "$(dirname "$0")/scanner.pid"
while [ -e "$(dirname "$0")/hang" ]; do sleep 0.1; done
if [ -e "$(dirname "$0")/broken" ]; then echo "database missing"; exit 2; fi
if grep -q EVIL-MARKER "$1"; then echo "$1: Evil.Marker FOUND"; exit 1; fi
echo "$1: OK"
"""


@pytest.fixture
def quarantine(tmp_path: Path) -> Path:
    return tmp_path / "quarantine"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yar"
    path.write_text(RULES)
    return path


@pytest.fixture
def fake_scanner(tmp_path: Path) -> Path:
    folder = tmp_path / "scanner"
    folder.mkdir()
    script = folder / "fake-scan"
    script.write_text(FAKE_SCANNER)
    script.chmod(0o755)
    return script


def gate_server(
    upload_dir: Path, scanner: Callable[[Path], Any], quarantine: Path, **options: Any
) -> UploadServer:
    directory = UploadDirectory(
        upload_dir=upload_dir, scanner=scanner, quarantine_dir=quarantine, **options
    )
    return UploadServer(directory, FilesystemBackend(upload_dir), sweep_interval=None)


def send(server: UploadServer, name: str, data: bytes) -> tuple[ServerClient, Any]:
    client = ServerClient(server, path=f"/{name}", user="HOST1$")
    assert client.create().status_int == 200
    half = len(data) // 2
    assert client.fragment(data[:half], 0, len(data)).status_int == 200
    return client, client.fragment(data[half:], half, len(data))


def test_a_yara_match_is_quarantined_and_never_published(
    upload_dir: Path, quarantine: Path, rules: Path
) -> None:
    server = gate_server(upload_dir, YaraScanner(rules), quarantine)
    client, final = send(server, "dump.bin", EVIL)
    # 403 E_ACCESSDENIED: fatal for Windows, so the job stops instead of resending the bytes.
    assert (final.status_int, final.headers["BITS-Error-Code"]) == (403, "0x80070005")
    assert not (upload_dir / "dump.bin").exists()
    session = str(client.session_id)
    assert (quarantine / f"{session}.bin").read_bytes() == EVIL
    note = json.loads((quarantine / f"{session}.json").read_text())
    assert (note["owner"], note["destination"]) == ("HOST1$", "dump.bin")
    assert "evil_marker" in note["reason"]
    assert list((upload_dir / "BITS-Sessions" / "Requests").iterdir()) == []  # data moved
    # The session ended: the final fragment again is refused, Close is a no-op.
    again = client.fragment(EVIL[len(EVIL) // 2 :], len(EVIL) // 2, len(EVIL))
    assert again.status_int == 500 and again.headers["BITS-Error-Code"] == "0x8020001F"
    assert client.close().status_int == 200
    assert not (upload_dir / "dump.bin").exists()


def test_a_clean_upload_publishes(upload_dir: Path, quarantine: Path, rules: Path) -> None:
    server = gate_server(upload_dir, YaraScanner(rules), quarantine)
    client, final = send(server, "logs.txt", CLEAN)
    assert final.status_int == 200
    assert (upload_dir / "logs.txt").read_bytes() == CLEAN
    assert not quarantine.exists() or list(quarantine.iterdir()) == []


def test_a_fake_scanner_command_refuses_and_accepts(
    upload_dir: Path, quarantine: Path, fake_scanner: Path
) -> None:
    server = gate_server(upload_dir, CommandScanner(f"{fake_scanner} {{}}"), quarantine)
    _, refused = send(server, "evil.bin", EVIL)
    assert refused.status_int == 403
    _, accepted = send(server, "fine.bin", CLEAN)
    assert accepted.status_int == 200
    assert (upload_dir / "fine.bin").read_bytes() == CLEAN
    assert not (upload_dir / "evil.bin").exists()
    (note,) = quarantine.glob("*.json")
    assert "Evil.Marker FOUND" in json.loads(note.read_text())["reason"]


def test_a_hanging_scanner_times_out_without_publishing(
    upload_dir: Path, quarantine: Path, fake_scanner: Path
) -> None:
    hang = fake_scanner.parent / "hang"
    hang.touch()
    scanner = CommandScanner([str(fake_scanner)], timeout=1.0)
    server = gate_server(upload_dir, scanner, quarantine, scan_timeout=1.0)
    client, final = send(server, "dump.bin", CLEAN)
    # Transient: Windows sends the final fragment again after its retry delay.
    assert (final.status_int, final.headers["BITS-Error-Code"]) == (503, "0x801901F7")
    assert "Retry-After" in final.headers
    assert not (upload_dir / "dump.bin").exists()
    pid = int((fake_scanner.parent / "scanner.pid").read_text())
    with pytest.raises(ProcessLookupError):  # the command was killed, not left running
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    hang.unlink()
    again = client.fragment(CLEAN[len(CLEAN) // 2 :], len(CLEAN) // 2, len(CLEAN))
    assert again.status_int == 200
    assert (upload_dir / "dump.bin").read_bytes() == CLEAN


def test_a_broken_scanner_publishes_nothing(
    upload_dir: Path, quarantine: Path, fake_scanner: Path
) -> None:
    (fake_scanner.parent / "broken").touch()
    server = gate_server(upload_dir, CommandScanner([str(fake_scanner)]), quarantine)
    _, final = send(server, "dump.bin", CLEAN)
    assert final.status_int == 503
    assert not (upload_dir / "dump.bin").exists()


def test_a_callable_scanner_and_its_failures(upload_dir: Path, quarantine: Path) -> None:
    def scanner(path: Path) -> bool:
        data = path.read_bytes()
        if b"RAISE" in data:
            raise RuntimeError("engine crashed")
        if b"UNSURE" in data:
            raise ScanFailed("signatures are updating")
        return b"EVIL" not in data

    server = gate_server(upload_dir, scanner, quarantine)
    assert send(server, "a.bin", CLEAN)[1].status_int == 200
    assert send(server, "b.bin", EVIL)[1].status_int == 403
    assert send(server, "c.bin", CLEAN + b"RAISE")[1].status_int == 503
    assert send(server, "d.bin", CLEAN + b"UNSURE")[1].status_int == 503
    assert sorted(p.name for p in upload_dir.iterdir() if p.is_file()) == ["a.bin"]


def test_scans_that_never_return_are_bounded(
    upload_dir: Path, quarantine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_gate, "MAX_RUNNING", 2)
    release = threading.Event()

    def stuck(path: Path) -> Verdict:
        release.wait(30)
        return Verdict(True)

    server = gate_server(upload_dir, stuck, quarantine, scan_timeout=0.2)
    try:
        for name in ("a.bin", "b.bin"):
            assert send(server, name, CLEAN)[1].status_int == 503  # timed out, thread kept
        started = time.monotonic()
        assert send(server, "c.bin", CLEAN)[1].status_int == 503
        assert time.monotonic() - started < 0.2  # refused at once: no third thread
    finally:
        release.set()


def test_the_event_records_the_verdict(upload_dir: Path, quarantine: Path, rules: Path) -> None:
    directory = UploadDirectory(
        upload_dir=upload_dir, scanner=YaraScanner(rules), quarantine_dir=quarantine
    )
    hooks = Webhooks(urls=("http://127.0.0.1:9/",), secret=b"s" * 16, deliver=False)
    server = UploadServer(
        directory, FilesystemBackend(upload_dir), sweep_interval=None, webhooks=hooks
    )
    send(server, "clean.bin", CLEAN)
    send(server, "evil.bin", EVIL)
    assert server.backend.outbox is not None
    events = {
        e["destination"]: e for e in (json.loads(x.body) for x in server.backend.outbox.entries())
    }
    assert (events["clean.bin"]["verdict"], events["clean.bin"]["published"]) == ("clean", True)
    evil = events["evil.bin"]
    assert (evil["verdict"], evil["published"], evil["path"]) == ("refused", False, None)
    assert Path(evil["quarantine"]).read_bytes() == EVIL


def test_the_quarantine_lies_outside_every_upload_root(tmp_path: Path, rules: Path) -> None:
    scanner = YaraScanner(rules)
    with pytest.raises(ValueError, match="quarantine_dir"):
        UploadDirectory(upload_dir=tmp_path / "up", scanner=scanner)
    with pytest.raises(ValueError, match="outside the upload root"):
        UploadDirectory(
            upload_dir=tmp_path / "up", scanner=scanner, quarantine_dir=tmp_path / "up" / "q"
        )
    with pytest.raises(ValueError, match="outside every upload root"):
        BITSMiddleware(
            fallback_app,
            directories=[
                UploadDirectory(
                    upload_dir=tmp_path / "a", scanner=scanner, quarantine_dir=tmp_path / "b" / "q"
                ),
                UploadDirectory(upload_dir=tmp_path / "b", prefix="/b/"),
            ],
        )


def test_bad_yara_rules_are_refused_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yar"
    bad.write_text("rule broken { condition: }")
    with pytest.raises(ValueError, match="cannot compile"):
        YaraScanner(bad)
