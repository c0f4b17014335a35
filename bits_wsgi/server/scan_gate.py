"""The scan gate: a complete upload is scanned before it is published (or its application
notified); a refused one goes to quarantine, outside every upload root, and is never published.

Outcomes, as the client sees them (docs/protocol.md, "The scan gate"):

- clean: the upload goes on as without a gate (its event says ``"verdict": "clean"``);
- refused: 403 E_ACCESSDENIED, which Windows treats as fatal, so the job stops in ERROR instead
  of sending the same bytes again; the session ends (a tombstone) and its data is moved to
  ``quarantine_dir/{ID}.bin`` with ``{ID}.json`` beside it (who, where to, why);
- the scanner failed, raised, or ran past ``scan_timeout``: nothing is published and the client
  gets 503 + Retry-After; it sends the final fragment again later, which scans again.

A scanner runs in a thread of its own so that its time limit holds for any callable; at most
``MAX_RUNNING`` scans of one directory run at once (a callable that never returns keeps its
thread: past the bound, scans fail at once instead of piling up threads).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from .._files import atomic_write, publish
from ..config import UploadDirectory
from ..errors import ServiceUnavailable
from ..escaping import client_text
from ..protocol import SessionId
from ..scan import ScanFailed, Scanner, Verdict
from ..session import SessionRecord

log = logging.getLogger("bits_wsgi.scan")

#: Scans of one upload directory running at once (each holds a thread).
MAX_RUNNING = 8


class ScanGate:
    def __init__(self, directory: UploadDirectory, scanner: Scanner) -> None:
        assert directory.quarantine_dir is not None  # UploadDirectory requires it with a scanner
        self.scanner = scanner
        self.timeout = directory.scan_timeout
        self.quarantine_dir = directory.quarantine_dir
        self._slots = threading.BoundedSemaphore(MAX_RUNNING)

    def inspect(self, record: SessionRecord, data: Path) -> Verdict:
        """The verdict on ``data``; a scanner that cannot decide in time is a 503."""
        session = SessionId(record.id).wire
        try:
            verdict = self._run(data)
        except ScanFailed as exc:
            reason = client_text(str(exc))
            log.warning("session %s: scan failed, not published: %s", session, reason)
            raise ServiceUnavailable(f"scan failed: {exc}") from None
        if not verdict.clean:
            log.warning(
                "session %s: %s refused by the scan: %s",
                session,
                client_text(record.destination),
                client_text(verdict.reason),
            )
        return verdict

    def _run(self, data: Path) -> Verdict:
        if not self._slots.acquire(blocking=False):
            raise ScanFailed(f"{MAX_RUNNING} scans are running already")
        outcome: list[Verdict | BaseException] = []

        def scan() -> None:
            try:
                answer = self.scanner(data)
                outcome.append(answer if isinstance(answer, Verdict) else Verdict(bool(answer)))
            except BaseException as exc:  # reported to the waiting request below
                outcome.append(exc)
            finally:
                self._slots.release()

        worker = threading.Thread(target=scan, name="bits-wsgi-scan", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if not outcome:
            raise ScanFailed(f"the scan took more than {self.timeout:g} s")
        result = outcome[0]
        if isinstance(result, ScanFailed):
            raise result
        if isinstance(result, BaseException):
            raise ScanFailed(f"the scanner raised {result!r}")
        return result

    def quarantine(
        self, record: SessionRecord, data: Path, verdict: Verdict, sha256: str | None
    ) -> Path:
        """Move a refused upload's bytes out of reach, with a note of what they are."""
        self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        session = SessionId(record.id).wire
        folder = os.open(self.quarantine_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            publish(data, folder, f"{session}.bin", overwrite=True, tag=record.id)
        finally:
            os.close(folder)
        note = {
            "id": session,
            "owner": record.owner,
            "destination": record.destination,
            "size": record.received,
            "sha256": sha256,
            "reason": verdict.reason,
            "time": time.time(),
        }
        note_path = self.quarantine_dir / f"{session}.json"
        atomic_write(note_path, json.dumps(note).encode(), durable=True)
        return self.quarantine_dir / f"{session}.bin"
