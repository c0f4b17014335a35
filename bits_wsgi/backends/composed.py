"""A backend is records + blobs + a locker: the rules that bind the three live here, once.

::

    backend = ComposedBackend(records=..., blobs=..., locker=...)

``FilesystemBackend``, ``MemoryBackend`` and ``RedisBackend`` are such compositions with their
parts chosen; any other mix of parts that pass their contract suites is a backend too.

What the composition adds to its parts:

- the offset rule (PROTOCOL.md §10.2): an active, uncommitted session's offset is the length of
  its data, so it can never run ahead of the bytes held, and a fragment's progress needs no
  record write;
- the order of the steps that touch two parts: a session is created record first (a crash
  leaves a record the sweeps find, never bytes nobody lists), its data is deleted before its
  record for the same reason;
- fencing (§10.1), for lockers whose lock is a lease: each change of the bytes is checked
  against the lease, and a holder taking over from a writer whose lease expired rotates the
  data before it touches it;
- the blob store knows when the lock is held (``BlobStore.holding``), so what it read to load
  the session can serve the write that follows (S3 lists a session once per fragment).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from ..errors import CorruptRecord
from ..paths import Destination
from ..session import SessionRecord, holds_its_offset
from .base import BlobStore, LocalFiles, Locker, Outbox, RecordStore, UsageLedger


class ComposedBackend:
    def __init__(
        self,
        *,
        records: RecordStore,
        blobs: BlobStore,
        locker: Locker,
        outbox: Outbox | None = None,
        usage: UsageLedger | None = None,
    ) -> None:
        self.records = records
        self.blobs = blobs
        self.locker = locker
        self.files: LocalFiles | None = blobs.files
        self.outbox = outbox
        self.usage = usage

    # -- records ------------------------------------------------------------------------------

    def create(self, record: SessionRecord) -> None:
        self.records.create(record)
        try:
            self.blobs.create_data(record.id, record.destination)
        except BaseException:
            with contextlib.suppress(Exception):
                self.records.delete(record.id, record)
            raise

    def load(self, session_id: str) -> SessionRecord | None:
        record = self.records.load(session_id)
        if record is not None and holds_its_offset(record):
            size = self.blobs.data_size(session_id)
            if size is not None:
                record.received = size
        return record

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        self.records.save(record, durable=durable)

    def delete(self, session_id: str) -> None:
        self._check_lease(session_id)
        try:
            record = self.records.load(session_id)
        except CorruptRecord:
            record = None
        self.blobs.delete_data(session_id)
        self.records.delete(session_id, record)
        self.locker.forget(session_id)

    # -- bytes --------------------------------------------------------------------------------

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        fence = self.locker.fence(session_id)
        if fence is None:
            return self.blobs.write(session_id, offset, chunks)
        with fence.writing() as check:
            return self.blobs.write(session_id, offset, chunks, fence=check)

    def sync(self, session_id: str) -> None:
        self.blobs.sync(session_id)

    def data_size(self, session_id: str) -> int | None:
        return self.blobs.data_size(session_id)

    def destination_exists(self, destination: Destination) -> bool:
        return self.blobs.destination_exists(destination)

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None:
        self._check_lease(session_id)
        self.blobs.commit(session_id, destination, overwrite=overwrite)

    def discard_data(self, session_id: str) -> None:
        self._check_lease(session_id)
        self.blobs.discard_data(session_id)

    # -- locks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        with self.locker.lock(session_id, timeout), self.blobs.holding(session_id):
            fence = self.locker.fence(session_id)
            if fence is not None and fence.stale_writer:
                # The last holder's lease expired with the data open for writing (a paused
                # host): it may still write or cut back through that descriptor. A new inode
                # first, so nothing it does reaches the session or what it commits.
                self.blobs.rotate(session_id)
                fence.stale_writer_replaced()
            yield

    def _check_lease(self, session_id: str) -> None:
        fence = self.locker.fence(session_id)
        if fence is not None:
            fence.check()

    # -- enumeration --------------------------------------------------------------------------

    def active_sessions(self, owner: str) -> list[str]:
        return self.records.active_sessions(owner)

    def active_count(self) -> int:
        return self.records.active_count()

    def session_ids(self) -> Iterator[str]:
        return self.records.session_ids()

    def tombstone_count(self) -> int:
        return self.records.tombstone_count()

    def oldest_tombstones(self, limit: int) -> list[str]:
        return self.records.oldest_tombstones(limit)
