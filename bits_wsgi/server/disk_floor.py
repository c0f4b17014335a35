"""The free-disk floor (``min_free_disk``): below it, no new session; running ones go on.

A full disk mid-upload costs everyone: each session then stops at 500 ``0x80070070`` and waits
for space (PROTOCOL.md §5.1). Refusing new sessions while some room is left lets the running
ones finish. A Create-Session below the floor gets 503 + ``Retry-After``, which Windows retries
(§5.2); fragments of sessions already open are accepted while the disk has room.

The floor is checked on every filesystem the uploads fill: the upload root (where files are
published) and, for a backend that keeps the data as local files, the folder of the data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class DiskFloor:
    def __init__(self, minimum: int | None, folders: Iterable[Path]) -> None:
        self.minimum = minimum or None
        self.folders = tuple(dict.fromkeys(folders))

    def free(self) -> int | None:
        """The least space free to this process on any of the folders' filesystems (a folder
        not made yet counts as its nearest existing parent); None if none can be asked."""
        found: list[int] = []
        for folder in self.folders:
            existing = _existing(folder)
            if existing is None:
                continue
            try:
                usage = os.statvfs(existing)
            except OSError:
                continue
            found.append(usage.f_bavail * usage.f_frsize)
        return min(found) if found else None

    def reached(self) -> bool:
        """Whether a new session must wait: less than the floor is free."""
        if self.minimum is None:
            return False
        free = self.free()
        return free is not None and free < self.minimum


def _existing(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return None
