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
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from .._files import publish
from ..errors import LockTimeout
from ..paths import Destination
from ..session import SessionRecord
from .base import Fence, LocalFiles
from .composed import ComposedBackend
from .memory_ledgers import MemoryOutbox, MemoryUsage


class MemoryBackend(ComposedBackend):
    """``MemoryRecords``, ``MemoryBlobs`` and a ``ThreadLocker``."""

    def __init__(self) -> None:
        records = MemoryRecords()
        super().__init__(
            records=records,
            blobs=MemoryBlobs(),
            locker=ThreadLocker(records.exists),
            outbox=MemoryOutbox(),
            usage=MemoryUsage(),
        )


class MemoryRecords:
    """Records in a dict, handed out as copies."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}

    def create(self, record: SessionRecord) -> None:
        self._records[record.id] = copy.copy(record)

    def load(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        return None if record is None else copy.copy(record)

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        self._records[record.id] = copy.copy(record)

    def delete(self, session_id: str, record: SessionRecord | None) -> None:
        self._records.pop(session_id, None)

    def exists(self, session_id: str) -> bool:
        return session_id in self._records

    def _all(self) -> list[SessionRecord]:
        return list(self._records.values())

    def active_sessions(self, owner: str) -> list[str]:
        return sorted(r.id for r in self._all() if r.owner == owner and not r.state.is_tombstone)

    def active_count(self) -> int:
        return sum(1 for r in self._all() if not r.state.is_tombstone)

    def tombstone_count(self) -> int:
        return sum(1 for r in self._all() if r.state.is_tombstone)

    def oldest_tombstones(self, limit: int) -> list[str]:
        tombstones = sorted(
            (r for r in self._all() if r.state.is_tombstone), key=lambda r: r.last_activity
        )
        return [r.id for r in tombstones[: max(0, limit)]]

    def session_ids(self) -> Iterator[str]:
        yield from list(self._records)


class MemoryBlobs:
    """Bytes in RAM until the commit writes them to the destination."""

    files: LocalFiles | None = None

    def __init__(self) -> None:
        self._data: dict[str, bytearray] = {}
        self._published: dict[str, Path] = {}

    def create_data(self, session_id: str, destination_key: str) -> None:
        self._data[session_id] = bytearray()

    def write(
        self,
        session_id: str,
        offset: int,
        chunks: Iterable[bytes],
        fence: Callable[[], None] | None = None,
    ) -> int:
        data = self._data[session_id]
        if fence is not None:
            fence()
        del data[offset:]
        try:
            for chunk in chunks:
                data += chunk
        except BaseException:
            del data[offset:]
            raise
        return len(data) - offset

    def rotate(self, session_id: str) -> None:
        """Nothing to do: no descriptor reaches these bytes."""

    def holding(self, session_id: str) -> AbstractContextManager[None]:
        """Nothing kept: the bytes are at hand."""
        return contextlib.nullcontext()

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

    def delete_data(self, session_id: str) -> None:
        self._data.pop(session_id, None)
        self._published.pop(session_id, None)


class ThreadLocker:
    """A ``threading.Lock`` per known session: excludes the threads of this process only."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._known = known

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        with self._guard:
            # An unknown session has nothing to exclude, and nothing is kept for it.
            lock = None
            if self._known(session_id):
                lock = self._locks.setdefault(session_id, threading.Lock())
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=timeout):
            raise LockTimeout("session is busy")
        try:
            yield
        finally:
            lock.release()

    def fence(self, session_id: str) -> Fence | None:
        return None

    def forget(self, session_id: str) -> None:
        with self._guard:
            self._locks.pop(session_id, None)
