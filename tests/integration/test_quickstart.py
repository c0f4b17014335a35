"""docs/quickstart.md, run as written: its shell blocks, line by line, in a directory laid out
like the clone (the Makefile, the package and its virtual environment), on a free port."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest

from ..support.ports import free_port
from .helpers import PROJECT, background

pytestmark = pytest.mark.integration

PASSWORDS = {"alice": "secret", "bob": "other"}


def quickstart_lines() -> list[str]:
    text = (PROJECT / "docs" / "quickstart.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                lines.append(command)
    return lines


def test_the_quickstart_as_written(tmp_path: Path) -> None:
    clone = tmp_path / "bits_wsgi"
    clone.mkdir()
    for name in ("Makefile", "pyproject.toml", "bits_wsgi", ".venv"):
        (clone / name).symlink_to(PROJECT / name)
    port = free_port()
    log = tmp_path / "servers.log"
    ran: list[str] = []
    with contextlib.ExitStack() as servers:
        for line in quickstart_lines():
            if line.startswith(("git clone", "cd ")):
                continue  # the clone is made above
            if "HOST=0.0.0.0" in line:
                continue  # servers in tests listen on loopback only
            line = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            if line == "make serve":
                servers.enter_context(
                    background(["make", "serve", f"PORT={port}"], clone, port, log)
                )
            elif line.startswith(".venv/bin/bits-wsgi serve"):
                servers.close()  # "Stop the first server": the port is still its own
                command = [*line.split(), "--port", str(port)]
                servers.enter_context(background(command, clone, port, log))
            else:
                user = line.split()[-1] if " passwd " in f" {line} " else None
                done = subprocess.run(
                    line,
                    shell=True,
                    cwd=clone,
                    input=f"{PASSWORDS[user]}\n" if user else None,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert done.returncode == 0, (line, done.stdout, done.stderr)
                ran.append(f"{line}\n{done.stdout}")
    assert any(line.startswith("cmp ") and "identical" in line for line in ran), ran
    assert any("removed 0 expired sessions" in line for line in ran), ran
    sample = (clone / "sample.bin").read_bytes()
    assert (clone / "uploads" / "samples" / "sample.bin").read_bytes() == sample
    assert (clone / "uploads" / "samples" / "b.bin").read_bytes() == sample
    assert "secret" not in (clone / "users").read_text()
