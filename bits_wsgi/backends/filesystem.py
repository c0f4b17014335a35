"""The default backend: everything in files under ``ROOT/BITS-Sessions/``.

Layout (IIS names where IIS has them)::

    BITS-Sessions/
      sessions.sqlite3 (-wal, -shm)   records, indexes, events, quota counts (WAL mode)
      Requests/{ID}.bin               the upload's bytes, appended in order (DirectoryStore)
      Replies/{ID}/responsefile.bin   the server application's reply (upload-reply mode)
      sessions.lock                   one byte-range lock per session (RangeLocker)

A small upload creates one inode (its data, which its commit links into place) and commits
three SQLite transactions (docs/benchmarks.md, "The cost of a small upload").

Locks are open-file-description locks on one byte of ``sessions.lock`` per session, opened
anew for each acquisition, so they exclude threads and worker processes alike, as the
per-session ``flock`` of PROTOCOL.md §10.1 without a file per session (docs/protocol.md,
"Session locks"). Sessions survive restarts: there is no state in memory at all.

The first layout kept each record in the session's folder and indexed owners and tombstones
with empty marker files::

      Requests/{ID}/requestfile.bin   the bytes
      Requests/{ID}/session.json      the record, replaced atomically (FileRecords)
      Locks/{ID}.lock                 flock target, kept apart so it outlives the data (FlockLocker)
      Owners/<sha256 of owner>/{ID}   the per-identity session count
      Tombstones/<ms>-{ID}            the tombstone budget, oldest first

``FilesystemBackend`` adopts sessions it finds in that layout when it starts
(:func:`adopt_folder_layout`), so an upgrade loses no upload in progress. ``FileRecords`` stays
a record store of its own and ``FlockLocker`` a locker, tested by the same contracts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .._files import atomic_write, fsync_dir
from ..errors import CorruptRecord
from ..paths import state_dir
from ..protocol import SessionId
from ..session import SessionRecord, decode_record, encode_record
from .base import Fence
from .composed import ComposedBackend
from .files import DATA_NAME, REQUESTS_FOLDER, DirectoryStore, flat_data_file, request_folder
from .range_lock import RangeLocker
from .sqlite import SqliteRecords
from .sqlite_ledgers import SqliteOutbox, SqliteUsage
from .waiting import retry_until

RECORD_NAME = "session.json"
DATABASE_NAME = "sessions.sqlite3"
LOCK_FILE_NAME = "sessions.lock"
OWNERS_FOLDER = "Owners"
TOMBSTONES_FOLDER = "Tombstones"
LOCKS_FOLDER = "Locks"
#: A crashed create leaves a staging folder; it is swept after this long.
STAGING_MAX_AGE = 3600.0

log = logging.getLogger("bits_wsgi.backends.filesystem")


class FilesystemBackend(ComposedBackend):
    """``SqliteRecords`` and a flat ``DirectoryStore`` under ROOT, with ``RangeLocker`` locks."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        state = state_dir(self.root)
        self.directory = DirectoryStore(state, flat=True)
        records = SqliteRecords(state / DATABASE_NAME)
        adopt_folder_layout(state, records)
        ledgers = records.database  # one database and connection for records and ledgers
        super().__init__(
            records=records,
            blobs=self.directory,
            locker=RangeLocker(state / LOCK_FILE_NAME),
            outbox=SqliteOutbox(ledgers),
            usage=SqliteUsage(ledgers),
        )

    def data_path(self, session_id: str) -> Path:
        """The file holding the session's bytes."""
        return self.directory.data_path(session_id)


def adopt_folder_layout(state: Path, records: SqliteRecords) -> int:
    """Move the sessions of the first layout (``Requests/{ID}/``) into ``records`` and the flat
    data files; returns how many it moved.

    Safe to interrupt and to run from several processes at once: the processes queue on a lock
    of the ``Owners`` folder, which goes last, so whoever finds it gone has nothing left to do;
    records are adopted durably before any data file moves, a record already adopted is kept,
    and a data file already moved is found in its new place. Old-layout servers must be stopped
    first (an upgrade is a restart, not a rolling one).
    """
    owners = state / OWNERS_FOLDER
    try:
        guard = os.open(owners, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not owners.is_dir():
            return 0  # another process finished while this one waited
        requests = state / REQUESTS_FOLDER
        folders = _old_session_folders(requests)
        records.adopt(row for row in (_old_row(folder, key) for key, folder in folders) if row)
        for key, folder in folders:
            with contextlib.suppress(FileNotFoundError):
                os.rename(folder / DATA_NAME, flat_data_file(str(requests), key))
        fsync_dir(requests)
        for _, folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(state / TOMBSTONES_FOLDER, ignore_errors=True)
        shutil.rmtree(state / LOCKS_FOLDER, ignore_errors=True)
        shutil.rmtree(owners, ignore_errors=True)
        fsync_dir(state)
    finally:
        os.close(guard)
    if folders:
        log.info("adopted %d sessions from the folder layout under %s", len(folders), state)
    return len(folders)


def _old_session_folders(requests: Path) -> list[tuple[str, Path]]:
    """``(session key, folder)`` of each ``{ID}`` folder; crashed creates' staging folders are
    removed (their sessions were never answered)."""
    found: list[tuple[str, Path]] = []
    with os.scandir(requests) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            name = entry.name
            if name.startswith(".staging-"):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif name.startswith("{") and name.endswith("}"):
                found.append((name[1:-1], Path(entry.path)))
    return found


def _old_row(folder: Path, key: str) -> tuple[str, str, float | None, bytes] | None:
    """A record of the first layout as ``SqliteRecords.adopt`` takes it; unreadable ones are
    kept as they are (they stay corrupt: PROTOCOL.md §10.2 answers them as unknown)."""
    try:
        raw = (folder / RECORD_NAME).read_bytes()
    except FileNotFoundError:
        return None  # bytes without a record: no session to resume
    try:
        record = decode_record(key, raw)
    except CorruptRecord:
        return key, "", None, raw
    tombstone = record.last_activity if record.state.is_tombstone else None
    return key, record.owner, tombstone, raw


class FileRecords:
    """Records of the first layout: ``Requests/{ID}/session.json``, with owner and tombstone
    markers (see the module's docstring)."""

    def __init__(self, state: str | os.PathLike[str]) -> None:
        self.state = Path(state)
        self._requests = self.state / REQUESTS_FOLDER
        self._owners = self.state / OWNERS_FOLDER
        self._tombstones = self.state / TOMBSTONES_FOLDER
        for folder in (self._requests, self._owners, self._tombstones):
            folder.mkdir(parents=True, exist_ok=True)
        # Plain strings for the paths every packet touches: pathlib costs more than the syscalls.
        self._requests_str = str(self._requests)

    def _owner_dir(self, owner: str) -> Path:
        return self._owners / hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32]

    def _record_path(self, session_id: str) -> str:
        return f"{request_folder(self._requests_str, session_id)}/{RECORD_NAME}"

    def create(self, record: SessionRecord) -> None:
        # The folder appears whole, record included, by the rename below, or not at all.
        staging = self._requests / f".staging-{record.id}"
        staging.mkdir()
        (staging / RECORD_NAME).write_bytes(encode_record(record))
        owner_dir = self._owner_dir(record.owner)
        owner_dir.mkdir(exist_ok=True)
        (owner_dir / record.id).touch()
        os.rename(staging, request_folder(self._requests_str, record.id))

    def load(self, session_id: str) -> SessionRecord | None:
        try:
            with open(self._record_path(session_id), "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        return decode_record(session_id, raw)

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        atomic_write(Path(self._record_path(record.id)), encode_record(record), durable=durable)
        if record.state.is_tombstone:
            self._forget_owner(record.owner, record.id)
            (self._tombstones / _tombstone_marker(record)).touch()

    def _forget_owner(self, owner: str, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._owner_dir(owner) / session_id).unlink()

    def delete(self, session_id: str, record: SessionRecord | None) -> None:
        # The blob store removed the data and the folder with it, where they share it.
        shutil.rmtree(request_folder(self._requests_str, session_id), ignore_errors=True)
        if record is not None:
            self._forget_owner(record.owner, session_id)
            if record.state.is_tombstone:
                with contextlib.suppress(FileNotFoundError):
                    (self._tombstones / _tombstone_marker(record)).unlink()

    def exists(self, session_id: str) -> bool:
        return os.path.isdir(request_folder(self._requests_str, session_id))

    def active_sessions(self, owner: str) -> list[str]:
        try:
            return sorted(os.listdir(self._owner_dir(owner)))
        except FileNotFoundError:
            return []

    def active_count(self) -> int:
        count = 0
        with os.scandir(self._owners) as owners:
            for owner in owners:
                with contextlib.suppress(FileNotFoundError), os.scandir(owner.path) as ids:
                    count += sum(1 for _ in ids)
        return count

    def tombstone_count(self) -> int:
        return len(os.listdir(self._tombstones))

    def oldest_tombstones(self, limit: int) -> list[str]:
        """Oldest first, by the markers' names; a marker whose session is gone (an unreadable
        record that was deleted) is removed on the way."""
        oldest: list[str] = []
        for name in sorted(os.listdir(self._tombstones)):
            if len(oldest) >= limit:
                break
            session_id = name.partition("-")[2]
            if self.exists(session_id):
                oldest.append(session_id)
            else:
                with contextlib.suppress(FileNotFoundError):
                    (self._tombstones / name).unlink()
        return oldest

    def session_ids(self) -> Iterator[str]:
        now = time.time()
        with os.scandir(self._requests) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("{") and name.endswith("}"):
                    yield name[1:-1]
                elif name.startswith(".staging-"):
                    self._remove_stale_staging(Path(entry.path), now)

    def _remove_stale_staging(self, path: Path, now: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > STAGING_MAX_AGE:
                shutil.rmtree(path, ignore_errors=True)
                fsync_dir(self._requests)


class FlockLocker:
    """``flock`` on ``Locks/{ID}.lock``: a local lock, never lost by a live holder (no fence).

    An unknown session has nothing to exclude (ids are uuid4: none can be created meanwhile),
    so a probe with a random id creates no lock file: ``known`` says whether a session exists.
    """

    def __init__(self, folder: str | os.PathLike[str], known: Callable[[str], bool]) -> None:
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._folder_str = str(self._folder)
        self._known = known

    def _path(self, session_id: str) -> str:
        return f"{self._folder_str}/{SessionId(session_id).wire}.lock"

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        path = self._path(session_id)
        deadline = time.monotonic() + timeout
        while True:
            fd = self._open(path, session_id)
            if fd is None:
                yield
                return
            try:
                _flock_until(fd, deadline)
                # forget() unlinks lock files; a lock on an unlinked file excludes no one.
                if _same_inode(fd, path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)

    def _open(self, path: str, session_id: str) -> int | None:
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self._known(session_id):
                return None
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def fence(self, session_id: str) -> Fence | None:
        return None

    def forget(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(session_id))


def _tombstone_marker(record: SessionRecord) -> str:
    """Sorted by name, oldest first: the tombstone's time in milliseconds, then its id."""
    return f"{max(0, int(record.last_activity * 1000)):015d}-{record.id}"


def _flock_until(fd: int, deadline: float) -> None:
    def attempt() -> bool | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return None
        return True

    retry_until(deadline, attempt)


def _same_inode(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
