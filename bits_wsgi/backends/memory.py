"""A backend that keeps records and bytes in this process: for tests and single-process dev.

Upload bytes live in RAM until committed, so it suits small files only, and sessions do not
survive a restart or reach other worker processes. Commits still go to disk atomically.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from .._files import publish
from ..errors import LockTimeout
from ..paths import Destination
from ..session import SessionRecord, holds_its_offset


class MemoryBackend:
    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._data: dict[str, bytearray] = {}
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._published: dict[str, Path] = {}

    def create(self, record: SessionRecord) -> None:
        with self._guard:
            self._data[record.id] = bytearray()
            self._records[record.id] = copy.copy(record)

    def load(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        if record is None:
            return None
        record = copy.copy(record)
        data = self._data.get(session_id)
        if data is not None and holds_its_offset(record):
            record.received = len(data)
        return record

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        self._records[record.id] = copy.copy(record)

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        data = self._data[session_id]
        del data[offset:]
        try:
            for chunk in chunks:
                data += chunk
        except BaseException:
            del data[offset:]
            raise
        return len(data) - offset

    def sync(self, session_id: str) -> None:
        """Nothing to sync: the bytes are in memory until commit."""

    def data_size(self, session_id: str) -> int | None:
        data = self._data.get(session_id)
        return None if data is None else len(data)

    def destination_exists(self, destination: Destination) -> bool:
        return destination.resolve().exists()

    def commit(self, session_id: str, target: Destination, *, overwrite: bool) -> None:
        data = self._data.get(session_id)
        if data is None:
            raise FileNotFoundError(session_id)
        destination = target.resolve()
        if self._published.get(session_id) == destination and destination.exists():
            return  # already committed: commits are idempotent
        with target.open_parent() as (folder, name):
            fd, staged = tempfile.mkstemp(dir=f"/proc/self/fd/{folder}", prefix=f".{session_id}.")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                # mkstemp creates 0600; a committed upload is an ordinary, never executable file.
                os.chmod(staged, 0o644)
                publish(Path(staged), folder, name, overwrite=overwrite, tag=session_id)
                self._published[session_id] = destination
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(staged)

    def discard_data(self, session_id: str) -> None:
        self._data.pop(session_id, None)

    def delete(self, session_id: str) -> None:
        with self._guard:
            self._records.pop(session_id, None)
            self._data.pop(session_id, None)
            self._published.pop(session_id, None)
            self._locks.pop(session_id, None)

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        with self._guard:
            # An unknown session has nothing to exclude, and nothing is kept for it.
            lock = self._locks[session_id] if session_id in self._records else None
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=timeout):
            raise LockTimeout("session is busy")
        try:
            yield
        finally:
            lock.release()

    def active_sessions(self, owner: str) -> list[str]:
        return sorted(
            r.id
            for r in list(self._records.values())
            if r.owner == owner and not r.state.is_tombstone
        )

    def active_count(self) -> int:
        return sum(1 for r in list(self._records.values()) if not r.state.is_tombstone)

    def tombstone_count(self) -> int:
        return sum(1 for r in list(self._records.values()) if r.state.is_tombstone)

    def oldest_tombstones(self, limit: int) -> list[str]:
        tombstones = [r for r in list(self._records.values()) if r.state.is_tombstone]
        tombstones.sort(key=lambda r: r.last_activity)
        return [r.id for r in tombstones[: max(0, limit)]]

    def session_ids(self) -> Iterator[str]:
        yield from list(self._records)
