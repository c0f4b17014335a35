"""The default backend: everything in files under ``ROOT/BITS-Sessions/``.

Layout (IIS names where IIS has them)::

    BITS-Sessions/
      Requests/{ID}/requestfile.bin   the upload's bytes, appended in order
      Requests/{ID}/session.json      the record, replaced atomically
      Replies/{ID}/responsefile.bin   the server application's reply (upload-reply mode)
      Locks/{ID}.lock                 flock target, kept apart so it outlives the data
      Owners/<sha256 of owner>/{ID}   empty markers: the per-identity session count

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
from collections.abc import Iterable, Iterator
from pathlib import Path

from .._files import atomic_write, fsync_dir, publish
from ..errors import CorruptRecord, LockTimeout
from ..paths import state_dir
from ..session import SessionRecord

DATA_NAME = "requestfile.bin"
REPLY_NAME = "responsefile.bin"
RECORD_NAME = "session.json"
#: Fragments at least this big start their writeback at once (see write()).
_WRITEBACK_MIN = 256 * 1024
#: A crashed create leaves a staging folder; it is swept after this long.
STAGING_MAX_AGE = 3600.0


class FilesystemBackend:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.state = state_dir(self.root)
        self._requests = self.state / "Requests"
        self._replies = self.state / "Replies"
        self._locks = self.state / "Locks"
        self._owners = self.state / "Owners"
        for folder in (self._requests, self._replies, self._locks, self._owners):
            folder.mkdir(parents=True, exist_ok=True)
        # Plain strings for the paths every packet touches: pathlib costs more than the syscalls.
        self._requests_str = str(self._requests)
        self._locks_str = str(self._locks)

    # -- paths: ids reaching here are normalised GUIDs (protocol.normalise_session_id) --------

    def _session_dir(self, session_id: str) -> Path:
        return self._requests / f"{{{session_id}}}"

    def data_path(self, session_id: str) -> Path:
        return self._session_dir(session_id) / DATA_NAME

    def _data_str(self, session_id: str) -> str:
        return f"{self._requests_str}/{{{session_id}}}/{DATA_NAME}"

    def reply_path(self, session_id: str) -> Path:
        folder = self._replies / f"{{{session_id}}}"
        folder.mkdir(exist_ok=True)
        return folder / REPLY_NAME

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
            with open(f"{self._requests_str}/{{{session_id}}}/{RECORD_NAME}", "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        try:
            record = SessionRecord.from_json(json.loads(raw))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise CorruptRecord(f"session {session_id}: {exc}") from exc
        if record.id != session_id:
            raise CorruptRecord(f"session {session_id}: record names {record.id}")
        if not record.state.is_tombstone and not record.committed:
            # The offset is the data's length: what the disk holds, after any crash.
            size = self.data_size(session_id)
            if size is not None:
                record.received = size
        return record

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        atomic_write(self._session_dir(record.id) / RECORD_NAME, _encode(record), durable=durable)
        if record.state.is_tombstone:
            self._forget_owner(record.owner, record.id)

    def _forget_owner(self, owner: str, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._owner_dir(owner) / session_id).unlink()

    # -- data ---------------------------------------------------------------------------------

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        fd = os.open(self._data_str(session_id), os.O_WRONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            written = 0
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        count = os.pwrite(fd, view, offset + written)
                        written += count
                        view = view[count:]
            except BaseException:
                os.ftruncate(fd, offset)
                raise
            if written >= _WRITEBACK_MIN:
                # Start writing this fragment to disk now, in the background: the fsync before
                # the final Ack then finds little left to do, instead of the whole upload.
                os.posix_fadvise(fd, offset, written, os.POSIX_FADV_DONTNEED)
            return written
        finally:
            os.close(fd)

    def sync(self, session_id: str) -> None:
        fd = os.open(self._data_str(session_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def data_size(self, session_id: str) -> int | None:
        try:
            return os.stat(self._data_str(session_id)).st_size
        except FileNotFoundError:
            return None

    def commit(self, session_id: str, destination: Path, *, overwrite: bool) -> None:
        # The server fsynced the data at completion (§4.5); the link shares that inode, and
        # publish() fsyncs the directory that now names it.
        publish(self.data_path(session_id), destination, overwrite=overwrite, tag=session_id)

    def discard_data(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.data_path(session_id).unlink()
        shutil.rmtree(self._replies / f"{{{session_id}}}", ignore_errors=True)

    def delete(self, session_id: str) -> None:
        record: SessionRecord | None
        try:
            record = self.load(session_id)
        except CorruptRecord:
            record = None
        shutil.rmtree(self._session_dir(session_id), ignore_errors=True)
        shutil.rmtree(self._replies / f"{{{session_id}}}", ignore_errors=True)
        if record is not None:
            self._forget_owner(record.owner, session_id)
        with contextlib.suppress(FileNotFoundError):
            (self._locks / f"{{{session_id}}}.lock").unlink()

    # -- locks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        path = f"{self._locks_str}/{{{session_id}}}.lock"
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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

    # -- enumeration --------------------------------------------------------------------------

    def active_sessions(self, owner: str) -> list[str]:
        try:
            return sorted(os.listdir(self._owner_dir(owner)))
        except FileNotFoundError:
            return []

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
