"""The default backend: everything in files under ``ROOT/BITS-Sessions/``.

Layout (IIS names where IIS has them)::

    BITS-Sessions/
      Requests/{ID}/requestfile.bin   the upload's bytes, appended in order
      Requests/{ID}/session.json      the record, replaced atomically
      Replies/{ID}/responsefile.bin   the server application's reply (upload-reply mode)
      Locks/{ID}.lock                 flock target, kept apart so it outlives the data
      Owners/<sha256 of owner>/{ID}   empty markers: the per-identity session count
      Tombstones/<ms>-{ID}            empty markers, named by the tombstone's time: the budget

Locks are ``fcntl.flock`` on a file opened anew for each acquisition, so they exclude threads of
one process as well as gunicorn's worker processes. Sessions survive restarts: there is no state
in memory at all.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .._files import atomic_write, fsync_dir
from ..errors import CorruptRecord, LockTimeout
from ..paths import state_dir
from ..protocol import SessionId
from ..session import SessionRecord
from .files import DATA_NAME, DirectoryStore

RECORD_NAME = "session.json"
#: A crashed create leaves a staging folder; it is swept after this long.
STAGING_MAX_AGE = 3600.0


class FilesystemBackend(DirectoryStore):
    """Records beside the data (the DirectoryStore layout), flock locks, an owner index."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        super().__init__(state_dir(self.root))
        self._locks = self.state / "Locks"
        self._owners = self.state / "Owners"
        self._tombstones = self.state / "Tombstones"
        for folder in (self._locks, self._owners, self._tombstones):
            folder.mkdir(parents=True, exist_ok=True)
        self._locks_str = str(self._locks)

    # -- paths: ids reaching here are SessionId keys (protocol.SessionId) -----------------------

    def _owner_dir(self, owner: str) -> Path:
        return self._owners / hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32]

    # -- records ------------------------------------------------------------------------------

    def create(self, record: SessionRecord) -> None:
        staging = self._requests / f".staging-{record.id}"
        staging.mkdir()
        (staging / DATA_NAME).touch()
        # Not a replacement: the folder appears whole by the rename below, or not at all.
        (staging / RECORD_NAME).write_bytes(_encode(record))
        owner_dir = self._owner_dir(record.owner)
        owner_dir.mkdir(exist_ok=True)
        (owner_dir / record.id).touch()
        os.rename(staging, self._session_dir(record.id))

    def load(self, session_id: str) -> SessionRecord | None:
        try:
            with open(
                f"{self._requests_str}/{SessionId(session_id).wire}/{RECORD_NAME}", "rb"
            ) as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        return self.decode_record(session_id, raw)

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        atomic_write(self._session_dir(record.id) / RECORD_NAME, _encode(record), durable=durable)
        if record.state.is_tombstone:
            self._forget_owner(record.owner, record.id)
            (self._tombstones / _tombstone_marker(record)).touch()

    def _forget_owner(self, owner: str, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._owner_dir(owner) / session_id).unlink()

    def delete(self, session_id: str) -> None:
        record: SessionRecord | None
        try:
            record = self.load(session_id)
        except CorruptRecord:
            record = None
        self.delete_data(session_id)
        if record is not None:
            self._forget_owner(record.owner, session_id)
            if record.state.is_tombstone:
                with contextlib.suppress(FileNotFoundError):
                    (self._tombstones / _tombstone_marker(record)).unlink()
        with contextlib.suppress(FileNotFoundError):
            (self._locks / f"{SessionId(session_id).wire}.lock").unlink()

    # -- locks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        """The session's flock. An unknown session has nothing to exclude (ids are uuid4: none
        can be created meanwhile), so a probe with a random id creates no lock file."""
        path = f"{self._locks_str}/{SessionId(session_id).wire}.lock"
        deadline = time.monotonic() + timeout
        while True:
            fd = self._open_lock_file(path, session_id)
            if fd is None:
                yield
                return
            try:
                _flock_until(fd, deadline)
                # delete() unlinks lock files; a lock on an unlinked file excludes no one.
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

    def _open_lock_file(self, path: str, session_id: str) -> int | None:
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if not os.path.isdir(f"{self._requests_str}/{SessionId(session_id).wire}"):
                return None
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # -- enumeration --------------------------------------------------------------------------

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
            if os.path.isdir(f"{self._requests_str}/{SessionId(session_id).wire}"):
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


def _tombstone_marker(record: SessionRecord) -> str:
    """Sorted by name, oldest first: the tombstone's time in milliseconds, then its id."""
    return f"{max(0, int(record.last_activity * 1000)):015d}-{record.id}"


def _encode(record: SessionRecord) -> bytes:
    return json.dumps(record.to_json(), separators=(",", ":")).encode("utf-8")


def _flock_until(fd: int, deadline: float) -> None:
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout("session is busy")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _same_inode(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
