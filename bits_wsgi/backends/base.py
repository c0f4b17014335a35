"""The storage contract every backend fulfils (tusd's narrow datastore, in Python).

Backends store bytes and records and hold locks. They know nothing of HTTP or BITS headers, and
they decide nothing: offsets are validated by the server before a backend writes, and expiry is
the server's policy. ``bits_wsgi.testing.BackendContract`` is the test suite every backend passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..paths import Destination
from ..session import SessionRecord


class Backend(Protocol):
    def create(self, record: SessionRecord) -> None:
        """Store a new session with empty data. The id is new; creation is all-or-nothing."""

    def load(self, session_id: str) -> SessionRecord | None:
        """The record, or None if unknown. Unreadable records raise ``CorruptRecord``.

        For an active, uncommitted session, ``received`` is the length of the data held: the
        offset is derived from the data (PROTOCOL.md §10.2), so it can never run ahead of it,
        and a fragment's progress needs no record write.
        """

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        """Replace the record atomically; ``durable`` also survives a power loss."""

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        """Cut the data to ``offset`` bytes, then append ``chunks``; return the bytes written.

        An exception from ``chunks`` or the disk propagates after the data is cut back to
        ``offset``, so a failed fragment never moves the offset.
        """

    def sync(self, session_id: str) -> None:
        """fsync the session's data."""

    def data_size(self, session_id: str) -> int | None:
        """Bytes of data held, or None if the data is gone."""

    def destination_exists(self, destination: Destination) -> bool:
        """Whether something is already committed at ``destination`` (checked at Create).

        File backends resolve it below its root, raising ``InvalidRequest`` where symlinks
        lead out of the root or the path runs through a file.
        """

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None:
        """Publish the data at ``destination`` atomically, durably and idempotently.

        The caller has synced the data (``sync``) since its last write.

        Raises ``DestinationExists`` if it exists (and is not already this session's data) while
        ``overwrite`` is false, ``FileNotFoundError`` if the data is gone.
        """

    def discard_data(self, session_id: str) -> None:
        """Delete the temporary data and any stored reply, keeping the record (a tombstone)."""

    def delete(self, session_id: str) -> None:
        """Delete everything of the session: data, record, lock file, owner index entry."""

    def lock(self, session_id: str, timeout: float) -> AbstractContextManager[None]:
        """Exclusive lock over threads, processes (and hosts, where the backend can).

        Raises ``LockTimeout`` if not acquired within ``timeout`` seconds.
        """

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


class BlobStore(Protocol):
    """Where a backend that keeps its records elsewhere (Redis) keeps the upload bytes.

    The methods of the same name in :class:`Backend` say what each must do;
    ``create_data`` starts the empty data of a session bound for ``destination_key``,
    ``delete_data`` removes every byte of the session, reply included.
    """

    def create_data(self, session_id: str, destination_key: str) -> None: ...

    def write(
        self,
        session_id: str,
        offset: int,
        chunks: Iterable[bytes],
        fence: Callable[[], None] | None = None,
    ) -> int:
        """As :meth:`Backend.write`; ``fence`` raises ``LeaseLost`` once the caller's lease is
        gone, and is called before the stored bytes change (PROTOCOL.md §10.1)."""

    def rotate(self, session_id: str) -> None:
        """Make sure no descriptor opened before now reaches the session's data: called by a
        new lock holder that took over from one whose lease expired."""

    def sync(self, session_id: str) -> None: ...

    def data_size(self, session_id: str) -> int | None: ...

    def destination_exists(self, destination: Destination) -> bool: ...

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None: ...

    def discard_data(self, session_id: str) -> None: ...

    def delete_data(self, session_id: str) -> None: ...


@runtime_checkable
class LocalFiles(Protocol):
    """Optional capability: the upload and its reply are files on this host.

    Upload-reply mode needs it: by-reference notifications name these paths, and replies are
    served from them.
    """

    def data_path(self, session_id: str) -> Path:
        """The file holding the session's uploaded bytes."""

    def reply_path(self, session_id: str) -> Path:
        """Where the session's reply lives; its folder is created if missing."""

    def discard_reply(self, session_id: str) -> None:
        """Remove the session's reply file, if there is one."""

    def keep_reply(self, session_id: str) -> None:
        """Make sure the session has a reply file (an empty one if the application wrote none)."""


def local_files(backend: object) -> LocalFiles | None:
    """The backend's files on this host, if it keeps them: itself, or its blob store."""
    for candidate in (backend, getattr(backend, "blobs", None)):
        if isinstance(candidate, LocalFiles):
            return candidate
    return None
