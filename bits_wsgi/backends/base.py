"""What a backend is made of: records, blobs and a locker (tusd's narrow datastore, in parts).

Every backend is a :class:`~bits_wsgi.backends.composed.ComposedBackend` of three parts, each
with its own contract suite in ``bits_wsgi.testing``:

- a :class:`RecordStore` keeps session records and the indexes over them (per owner, active,
  tombstones), as stored: it never looks at the bytes;
- a :class:`BlobStore` keeps the upload bytes, commits them to their destination, and declares
  whether they are files on this host (:class:`LocalFiles`);
- a :class:`Locker` excludes other threads, processes and (where it can) hosts from a session,
  and hands out a :class:`Fence` where a live holder can lose its lock (leases that expire).

Two ledgers are optional: an :class:`Outbox` of completion events, recorded before the final
Ack and delivered later (at least once), and a :class:`UsageLedger` of the bytes each identity
stored per day (quotas). The backends that ship keep both beside their records: in the same
SQLite database, in Redis, or in memory.

The parts know nothing of HTTP or BITS headers and decide nothing: offsets are validated by the
server before a blob store writes, and expiry is the server's policy. :class:`Backend` is what
the server sees of the whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..paths import Destination
from ..session import SessionRecord


class RecordStore(Protocol):
    """Session records, replaced whole, and the indexes the server counts with."""

    def create(self, record: SessionRecord) -> None:
        """Store the record of a new session (a new id); all or nothing."""

    def load(self, session_id: str) -> SessionRecord | None:
        """The record as stored, or None if unknown; unreadable records raise ``CorruptRecord``."""

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        """Replace the record atomically; ``durable`` also survives a power loss. A tombstone
        leaves the owner's and the active index and enters the tombstone index."""

    def delete(self, session_id: str, record: SessionRecord | None) -> None:
        """Forget the session: its record and its index entries. ``record`` is what was stored
        (None if unreadable or already gone), for the indexes it is listed in."""

    def exists(self, session_id: str) -> bool:
        """Whether a record (readable or not) is stored under the id."""

    def active_sessions(self, owner: str) -> list[str]:
        """Ids of the owner's sessions that are not tombstones (possibly expired)."""

    def active_count(self) -> int:
        """How many sessions, of every owner, are not tombstones (possibly expired)."""

    def session_ids(self) -> Iterator[str]:
        """Every stored id, tombstones included, for sweeps."""

    def tombstone_count(self) -> int:
        """How many tombstones are stored (PROTOCOL.md §6.3: they have a budget)."""

    def oldest_tombstones(self, limit: int) -> list[str]:
        """Ids of up to ``limit`` tombstones, oldest first: the first to go past the budget."""


class LocalFiles(Protocol):
    """Capability of a blob store whose upload and reply are files on this host.

    Upload-reply mode needs it: by-reference notifications name these paths, and replies are
    served from them. A blob store declares it with its ``files`` attribute.
    """

    def data_path(self, session_id: str) -> Path:
        """The file holding the session's uploaded bytes."""

    def reply_path(self, session_id: str) -> Path:
        """Where the session's reply lives; its folder is created if missing."""

    def discard_reply(self, session_id: str) -> None:
        """Remove the session's reply file, if there is one."""

    def keep_reply(self, session_id: str) -> None:
        """Make sure the session has a reply file (an empty one if the application wrote none)."""


class BlobStore(Protocol):
    """The upload bytes of each session, and their commit to the destination."""

    @property
    def files(self) -> LocalFiles | None:
        """The capability of serving these bytes as files on this host, or None."""

    def create_data(self, session_id: str, destination_key: str) -> None:
        """Start the empty data of a new session bound for ``destination_key``."""

    def write(
        self,
        session_id: str,
        offset: int,
        chunks: Iterable[bytes],
        fence: Callable[[], None] | None = None,
    ) -> int:
        """Cut the data to ``offset`` bytes, then append ``chunks``; return the bytes written.

        An exception from ``chunks`` or the store propagates after the data is cut back to
        ``offset``, so a failed fragment never moves the offset. ``fence``, where the lock is
        a lease, raises ``LeaseLost`` once it is gone: it is called after the data is open and
        before the stored bytes change (PROTOCOL.md §10.1).
        """

    def rotate(self, session_id: str) -> None:
        """Make sure no descriptor opened before now reaches the session's data: called by a
        new lock holder that took over from one whose lease expired while it wrote."""

    def holding(self, session_id: str) -> AbstractContextManager[None]:
        """This thread holds the session's lock meanwhile: nobody else changes its data, so the
        store may keep what it reads (a listing, a size) until its own next change."""

    def sync(self, session_id: str) -> None:
        """Make the session's data durable."""

    def data_size(self, session_id: str) -> int | None:
        """Bytes of data held, or None if the data is gone."""

    def destination_exists(self, destination: Destination) -> bool:
        """Whether something is already committed at ``destination`` (checked at Create).

        File stores resolve it below its root, raising ``InvalidRequest`` where symlinks lead
        out of the root or the path runs through a file.
        """

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None:
        """Publish the data at ``destination`` atomically, durably and idempotently.

        The caller has synced the data (``sync``) since its last write. Raises
        ``DestinationExists`` if it exists (and is not already this session's data) while
        ``overwrite`` is false, ``FileNotFoundError`` if the data is gone.
        """

    def discard_data(self, session_id: str) -> None:
        """Delete the data and any stored reply (the session becomes a tombstone)."""

    def delete_data(self, session_id: str) -> None:
        """Delete every byte the store keeps for the session, reply included."""


class Fence(Protocol):
    """This thread's lease on a session, where a live holder can lose its lock (§10.1)."""

    #: The lock was taken over from a holder whose lease expired while it wrote: that holder
    #: may still write through a descriptor it opened, so the data must be rotated first.
    stale_writer: bool

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is gone."""

    def writing(self) -> AbstractContextManager[Callable[[], None]]:
        """Around a blob write: yields the ``fence`` to pass to ``BlobStore.write``, which
        checks the lease and marks the data as being written; on leaving, the mark goes and
        the lease is checked again (``LeaseLost`` if it expired while the bytes were written)."""

    def stale_writer_replaced(self) -> None:
        """The data was rotated: the stale writer can reach it no more."""


class Locker(Protocol):
    def lock(self, session_id: str, timeout: float) -> AbstractContextManager[None]:
        """Exclusive lock over threads, processes (and hosts, where the locker can).

        Raises ``LockTimeout`` if not acquired within ``timeout`` seconds. Locking an unknown
        session leaves nothing behind.
        """

    def fence(self, session_id: str) -> Fence | None:
        """The lease this thread holds on the session, if its lock is a lease that can expire
        under a live holder; None for locks that cannot (flock, thread locks)."""

    def forget(self, session_id: str) -> None:
        """The session is deleted: drop whatever was kept for its lock."""


EntryState = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True)
class OutboxEntry:
    """One completion event and where its delivery stands."""

    id: str
    #: the event exactly as it is signed and sent
    body: bytes
    created: float
    state: EntryState
    #: deliveries tried; also the claim's token (a claim counts one)
    attempts: int
    #: pending: when it is due (a claimed entry is due again when its claim lapses);
    #: delivered or dead: when it settled
    when: float
    last_error: str = ""
    #: the webhook URLs that accepted it (each is sent the event once it has)
    delivered_to: tuple[str, ...] = ()


class Outbox(Protocol):
    """Completion events, kept until delivered (at least once) or declared dead.

    A claim makes an entry invisible to other claimers until its lease lapses, so two
    processes or hosts never deliver one event at the same time; a claimer that dies leaves
    the entry due again when the lease lapses. A settle applies only to the claim it answers.
    """

    def add(self, entry_id: str, body: bytes, now: float) -> bool:
        """Store a pending event, durably, before the Ack that announces it; an id already
        here keeps its entry (False), so a repeated final fragment records its event once."""

    def claim(self, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` due pending entries, each now claimed until ``now + lease``."""

    def settle(
        self,
        entry: OutboxEntry,
        state: EntryState,
        when: float,
        *,
        error: str = "",
        delivered_to: tuple[str, ...] = (),
    ) -> bool:
        """The outcome of the claim ``entry`` came from; False if that claim was lost."""

    def get(self, entry_id: str) -> OutboxEntry | None: ...

    def entries(self, *, dead_only: bool = False, limit: int = 100) -> list[OutboxEntry]:
        """The newest entries first."""

    def replay(self, entry_id: str, now: float) -> bool:
        """Make an entry pending and due at once, its attempts and deliveries forgotten."""

    def prune(self, settled_before: float) -> int:
        """Remove delivered and dead entries settled before that time; how many went."""


class UsageLedger(Protocol):
    """Bytes stored per identity per day (days since the epoch, UTC), for quotas."""

    def take(self, owner: str, day: int, count: int, limit: int) -> bool:
        """Add ``count`` to the owner's day if the total stays within ``limit``, atomically
        (two fragments of one identity on two hosts cannot both pass the last room)."""

    def give_back(self, owner: str, day: int, count: int) -> None:
        """Undo a ``take`` whose bytes were not stored after all."""

    def used(self, owner: str, day: int) -> int: ...

    def day_totals(self, day: int, limit: int = 100) -> dict[str, int]:
        """The biggest users of that day, with their bytes."""

    def forget_before(self, day: int) -> None:
        """Drop the counts of earlier days."""


class Backend(Protocol):
    """What the server sees: the three parts as one (``ComposedBackend``)."""

    @property
    def files(self) -> LocalFiles | None:
        """The blob store's files on this host, if it keeps them (upload-reply mode needs them)."""

    @property
    def outbox(self) -> Outbox | None:
        """Where completion events wait for delivery, if the backend keeps them."""

    @property
    def usage(self) -> UsageLedger | None:
        """The bytes each identity stored per day, if the backend counts them."""

    def create(self, record: SessionRecord) -> None:
        """Store a new session with empty data."""

    def load(self, session_id: str) -> SessionRecord | None:
        """The record, or None if unknown; unreadable records raise ``CorruptRecord``.

        For an active, uncommitted session, ``received`` is the length of the data held
        (PROTOCOL.md §10.2), so it can never run ahead of the bytes.
        """

    def save(self, record: SessionRecord, *, durable: bool = False) -> None: ...

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int: ...

    def sync(self, session_id: str) -> None: ...

    def data_size(self, session_id: str) -> int | None: ...

    def destination_exists(self, destination: Destination) -> bool: ...

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None: ...

    def discard_data(self, session_id: str) -> None:
        """Delete the data and any stored reply, keeping the record (a tombstone)."""

    def delete(self, session_id: str) -> None:
        """Delete everything of the session: data, record, index entries, lock state."""

    def lock(self, session_id: str, timeout: float) -> AbstractContextManager[None]: ...

    def active_sessions(self, owner: str) -> list[str]: ...

    def active_count(self) -> int: ...

    def session_ids(self) -> Iterator[str]: ...

    def tombstone_count(self) -> int: ...

    def oldest_tombstones(self, limit: int) -> list[str]: ...
