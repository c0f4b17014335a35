"""Two ready scanners for the scan gate: a command (an antivirus's command-line scanner) and a
YARA rule set (``pip install 'bits-wsgi[scan]'``)."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..scan import CLEAN, ScanFailed, Verdict

#: Bytes of a command's output kept as the reason of its verdict.
OUTPUT_KEPT = 500


class CommandScanner:
    """Runs ``command`` with the upload's path in place of ``{}`` (or after its last word).

    Exit status 0 is clean and 1 is refused, as ``clamdscan`` and ``clamscan`` answer; any
    other status, or more than ``timeout`` seconds, is a failure (the command's whole process
    group is killed). The command's output becomes the verdict's reason.
    """

    def __init__(self, command: str | Sequence[str], *, timeout: float = 300.0) -> None:
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("the scan command is empty")
        self.timeout = timeout

    def __call__(self, path: Path) -> Verdict:
        argv = [word.replace("{}", str(path)) for word in self.argv]
        if not any("{}" in word for word in self.argv):
            argv.append(str(path))
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills what it started too
            )
        except OSError as exc:
            raise ScanFailed(f"cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            output, _ = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise ScanFailed(f"{argv[0]} took more than {self.timeout:g} s") from None
        said = output.decode("utf-8", "replace").strip()[-OUTPUT_KEPT:]
        if process.returncode == 0:
            return CLEAN
        if process.returncode == 1:
            return Verdict(False, said or f"{argv[0]} found something")
        raise ScanFailed(f"{argv[0]} exited with {process.returncode}: {said}")


class YaraScanner:
    """Refuses an upload that any rule of the rule set matches (yara-python)."""

    def __init__(self, rules: str | os.PathLike[str], *, timeout: float = 300.0) -> None:
        try:
            import yara
        except ImportError as exc:
            raise ValueError("a YARA scan needs pip install 'bits-wsgi[scan]'") from exc
        self._yara: Any = yara
        try:
            self.rules = yara.compile(filepath=os.fspath(rules))
        except yara.Error as exc:
            raise ValueError(f"cannot compile the YARA rules {rules}: {exc}") from exc
        self.timeout = timeout

    def __call__(self, path: Path) -> Verdict:
        try:
            matches = self.rules.match(os.fspath(path), timeout=max(1, math.ceil(self.timeout)))
        except self._yara.TimeoutError:
            raise ScanFailed(f"YARA took more than {self.timeout:g} s") from None
        except self._yara.Error as exc:
            raise ScanFailed(f"YARA failed: {exc}") from exc
        if matches:
            return Verdict(False, "YARA rules matched: " + ", ".join(m.rule for m in matches))
        return CLEAN
