"""Completion events into the outbox: recorded durably after the commit and before the final
Ack, so an event is never lost to a crash after the client heard of its success.

A crash between the commit and the record leaves the client without its final Ack: it sends
the final fragment again (PROTOCOL.md §4.5), the commit is found done (it is idempotent), and
this records the event then; an event already recorded is kept, not duplicated.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..backends.base import Outbox
from ..config import UploadDirectory
from ..protocol import SessionId
from ..session import SessionRecord
from ..webhooks import Webhooks, completion_body, idempotency_key
from .delivery import Deliverer


class Completions:
    def __init__(
        self,
        outbox: Outbox,
        webhooks: Webhooks,
        directory: UploadDirectory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.directory = directory
        self._clock = clock
        self.host = socket.gethostname()
        self.deliverer = Deliverer(outbox, webhooks, clock=clock) if webhooks.deliver else None
        # From the start, not at the first request: events a crashed process left in the
        # outbox are delivered after a restart whether or not an upload comes.
        self.ensure_running()

    def record(
        self,
        record: SessionRecord,
        *,
        sha256: str | None,
        path: Path | None,
        verdict: str | None = None,
        quarantine: Path | None = None,
    ) -> None:
        session = SessionId(record.id)
        now = self._clock()
        event: dict[str, object] = {
            "type": "upload_complete",
            "id": session.wire,
            "idempotency_key": idempotency_key(session.key, sha256),
            "owner": record.owner,
            "destination": record.destination,
            "prefix": self.directory.prefix,
            "size": record.received,
            "sha256": sha256,
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "host": self.host,
            "published": path is not None,
            "path": None if path is None else str(path),
            "verdict": verdict,
            "quarantine": None if quarantine is None else str(quarantine),
        }
        if self.outbox.add(session.wire, completion_body(event), now) and self.deliverer:
            self.deliverer.wake()

    def ensure_running(self) -> None:
        if self.deliverer is not None:
            self.deliverer.ensure_running()

    def close(self) -> None:
        if self.deliverer is not None:
            self.deliverer.close()
