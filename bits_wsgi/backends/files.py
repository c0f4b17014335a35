"""Upload bytes and replies as files in one directory: a blob store with local files.

``DirectoryStore`` keeps, below a state directory, in one of two layouts::

    Requests/{ID}.bin               the upload's bytes, appended in order (flat=True)
    Requests/{ID}/requestfile.bin   the same, in a folder per session (IIS's names)
    Replies/{ID}/responsefile.bin   the server application's reply (upload-reply mode)

The filesystem backend uses the flat layout: one new inode per session instead of a folder and
a file, which is most of what a small upload costs (docs/benchmarks.md, "The cost of a small
upload"). The Redis backend keeps records and locks in Redis and the bytes here, in a directory
every host mounts, in the folder layout it has always had (the shared-directory blob store;
``bits_wsgi.backends.s3.S3Store`` is the other one). Ids reaching here are normalised GUIDs
(``protocol.SessionId.key``), never client text.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from .._files import publish
from ..paths import REPLIES_FOLDER, REPLY_NAME, Destination
from ..protocol import SessionId

REQUESTS_FOLDER = "Requests"
DATA_NAME = "requestfile.bin"
#: The data file's suffix in the flat layout.
FLAT_SUFFIX = ".bin"
#: Fragments at least this big start their writeback at once (see write()).
_WRITEBACK_MIN = 256 * 1024


def request_folder(requests: str, session_id: str) -> str:
    """The folder of a session's request in the folder layout."""
    return f"{requests}/{SessionId(session_id).wire}"


def flat_data_file(requests: str, session_id: str) -> str:
    """A session's data file in the flat layout."""
    return f"{requests}/{SessionId(session_id).wire}{FLAT_SUFFIX}"


class DirectoryStore:
    """A :class:`~bits_wsgi.backends.base.BlobStore` that is its own ``LocalFiles``."""

    def __init__(self, state: str | os.PathLike[str], *, flat: bool = False) -> None:
        self.state = Path(state)
        self.files = self
        self.flat = flat
        self._requests = self.state / REQUESTS_FOLDER
        self._replies = self.state / REPLIES_FOLDER
        for folder in (self._requests, self._replies):
            folder.mkdir(parents=True, exist_ok=True)
        # Plain strings for the paths every packet touches: pathlib costs more than the syscalls.
        self._requests_str = str(self._requests)

    def _session_dir(self, session_id: str) -> Path:
        return self._requests / SessionId(session_id).wire

    def data_path(self, session_id: str) -> Path:
        return Path(self._data_str(session_id))

    def _data_str(self, session_id: str) -> str:
        if self.flat:
            return flat_data_file(self._requests_str, session_id)
        return f"{request_folder(self._requests_str, session_id)}/{DATA_NAME}"

    def reply_path(self, session_id: str) -> Path:
        folder = self._replies / SessionId(session_id).wire
        folder.mkdir(exist_ok=True)
        return folder / REPLY_NAME

    def discard_reply(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._replies / SessionId(session_id).wire / REPLY_NAME)

    def keep_reply(self, session_id: str) -> None:
        path = self.reply_path(session_id)
        if not path.exists():
            path.touch()

    def create_data(self, session_id: str, destination_key: str) -> None:
        """An empty data file for a new session (in the folder its record may already hold)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        if self.flat:
            os.close(os.open(flat_data_file(self._requests_str, session_id), flags, 0o666))
            return
        folder = request_folder(self._requests_str, session_id)
        path = f"{folder}/{DATA_NAME}"
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:  # no record store made the folder (a blob store alone)
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder)
            fd = os.open(path, flags, 0o666)
        os.close(fd)

    def delete_data(self, session_id: str) -> None:
        if self.flat:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._data_str(session_id))
        else:
            shutil.rmtree(self._session_dir(session_id), ignore_errors=True)
        shutil.rmtree(self._replies / SessionId(session_id).wire, ignore_errors=True)

    def write(
        self,
        session_id: str,
        offset: int,
        chunks: Iterable[bytes],
        fence: Callable[[], None] | None = None,
    ) -> int:
        """``fence`` (lease-based locks) is called once the file is open and before it changes:
        it raises if the lease is gone. A holder that loses it later writes only to a file the
        next holder has replaced (:meth:`rotate`), never to the session's data."""
        fd = os.open(self._data_str(session_id), os.O_WRONLY | os.O_CLOEXEC)
        try:
            if fence is not None:
                fence()
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

    def rotate(self, session_id: str) -> None:
        """Give the data a new inode with the same bytes (PROTOCOL.md §10.1, fencing).

        Called by a lock holder taking over from one whose lease expired while it may still
        hold the data file open: whatever that stale writer does through its descriptor (write
        the rest of a body, cut back on a dropped connection) then reaches an unlinked file,
        never this session's data, nor a destination later committed from it.
        """
        data = self._data_str(session_id)
        staged = f"{data}.rotating"
        try:
            shutil.copyfile(data, staged)
        except FileNotFoundError:
            return  # discarded or committed and closed: nothing left to protect
        os.replace(staged, data)

    def holding(self, session_id: str) -> AbstractContextManager[None]:
        """Nothing kept: a size is one stat."""
        return contextlib.nullcontext()

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

    def destination_exists(self, destination: Destination) -> bool:
        return destination.resolve().exists()

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None:
        # The server fsynced the data at completion (§4.5); the link shares that inode, and
        # publish() fsyncs the directory that now names it.
        data = self.data_path(session_id)
        if not data.exists():
            raise FileNotFoundError(str(data))
        with destination.open_parent() as (folder, name):
            publish(data, folder, name, overwrite=overwrite, tag=session_id)

    def discard_data(self, session_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._data_str(session_id))
        shutil.rmtree(self._replies / SessionId(session_id).wire, ignore_errors=True)
