"""Session locks as byte-range locks in one file: no file per session to create or remove.

Each session locks one byte of a shared lock file, at an offset taken from its id, with an
open-file-description lock (``F_OFD_SETLK``, Linux 3.15+). Such a lock belongs to the open file,
not to the process: the file is opened anew for each acquisition, so the lock excludes the other
threads of the process as well as other processes, as ``flock`` does, and closing the file
releases it, even when the process dies. Classic ``fcntl.lockf`` locks would not exclude
threads, and closing any descriptor of the file would drop all of the process's locks.

Two sessions whose ids share the offset (62 random bits of a uuid4) would only wait for each
other, never run together: the lock can be too strict, never too loose.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from .base import Fence
from .waiting import retry_until

#: ``struct flock`` (Linux): l_type, l_whence, l_start, l_len, l_pid, padding.
_FLOCK = struct.Struct("@hhqqi4x")
_SLOT_MASK = (1 << 62) - 1
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def slot(session_id: str) -> int:
    """The byte a session locks: the low 62 bits of its id (random in a uuid4)."""
    try:
        return int(session_id.replace("-", ""), 16) & _SLOT_MASK
    except ValueError:  # not a GUID: any stable spread will do
        digest = hashlib.sha256(session_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") & _SLOT_MASK


class RangeLocker:
    """A :class:`~bits_wsgi.backends.base.Locker`: a local lock, never lost by a live holder
    (no lease, so no fence), for every host that shares the lock file's filesystem locally."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._path = str(self.path)
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, slot(session_id), 1, 0)
        # O_CREAT: a lock file removed by hand comes back rather than failing every packet.
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:

            def attempt() -> bool | None:
                try:
                    fcntl.fcntl(fd, F_OFD_SETLK, request)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    return None
                return True

            if attempt() is None:  # held: wait (a session's packets rarely meet)
                retry_until(deadline, attempt)
            yield
        finally:
            os.close(fd)  # the lock goes with the open file description

    def fence(self, session_id: str) -> Fence | None:
        return None

    def forget(self, session_id: str) -> None:
        """Nothing is kept per session."""
