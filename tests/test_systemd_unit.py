"""examples/bits-wsgi.service: a hardened unit that systemd itself accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
UNIT = PROJECT / "examples" / "bits-wsgi.service"


def test_the_unit_is_hardened() -> None:
    text = UNIT.read_text()
    for line in (
        "User=bits-wsgi",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/bits-uploads",
        "KillSignal=SIGTERM",
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    (start,) = re.findall(r"^ExecStart=(\S+) serve (\S+)", text, re.MULTILINE)
    assert start == ("/opt/bits-wsgi/bin/bits-wsgi", "/srv/bits-uploads")


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # The unit names the command where its install steps put it; here it is this environment's.
    command = Path(sys.executable).parent / "bits-wsgi"
    unit = tmp_path / "bits-wsgi.service"
    unit.write_text(UNIT.read_text().replace("/opt/bits-wsgi/bin/bits-wsgi", str(command)))
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == "" and checked.stderr == "", checked.stderr
