"""The scan gate's plain values: what a scanner answers about a complete upload before it is
published (``UploadDirectory.scanner``; the gate itself is ``server.scan_gate``).

A scanner is a callable that takes the path of the complete upload (a file the server keeps
outside every upload root) and answers a :class:`Verdict`, or ``True`` for clean and ``False``
for refused; it raises :class:`ScanFailed` (or any exception) when it cannot decide::

    def scanner(path):
        return b"EICAR" not in path.read_bytes()[:4096]

``bits_wsgi.server.scanners`` has two ready ones: a command (``clamdscan --fdpass``) and a YARA
rule set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Verdict:
    clean: bool
    #: why a refused upload was refused (a signature, a rule name), for the log and quarantine
    reason: str = ""


CLEAN = Verdict(True)


class ScanFailed(Exception):
    """The scanner could not decide (it failed, or ran out of time): nothing is published, and
    the client is told to try again later."""


Scanner = Callable[[Path], Verdict | bool]
