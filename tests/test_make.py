"""The README's two commands: what `make serve` and `make test` would install (`make -n`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def _planned(target: str, venv: Path, *variables: str) -> str:
    """The commands ``make TARGET`` would run on a machine without the virtual environment."""
    result = subprocess.run(
        ["make", "-n", target, f"VENV={venv}", *variables],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_make_serve_installs_only_what_serving_needs(tmp_path: Path) -> None:
    planned = _planned("serve", tmp_path / "venv")
    installs = [line for line in planned.splitlines() if "pip install" in line and "-e" in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/python -m pip install --quiet -e '.[serve]'"]
    assert "bits-wsgi serve ./uploads" in planned


def test_make_test_installs_the_tools_too(tmp_path: Path) -> None:
    planned = _planned("test", tmp_path / "venv")
    # Negotiate's GSSAPI builds against the system's Kerberos: installed where that is there
    extras = "serve,test,dev,negotiate" if shutil.which("krb5-config") else "serve,test,dev"
    assert f"-e '.[{extras}]'" in planned
    without_kerberos = _planned("test", tmp_path / "venv", "NEGOTIATE=")
    assert "-e '.[serve,test,dev]'" in without_kerberos
