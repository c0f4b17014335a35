"""The two file steps every baseline server shares: a body written at its offset, and a file
linked under a name whose folder is then fsynced (PROTOCOL.md §10.2's commit)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

CHUNK = 1024 * 1024


def write_body(fd: int, read: Callable[[int], bytes], offset: int, remaining: int) -> int:
    """Copy ``remaining`` bytes of the request body to ``fd`` from ``offset``, in 1 MiB reads;
    the offset reached (short if the body ended early)."""
    while remaining:
        data = read(min(CHUNK, remaining))
        if not data:
            break
        os.pwrite(fd, data, offset)
        offset += len(data)
        remaining -= len(data)
    return offset


def link_durably(source: Path | str, destination: Path) -> None:
    """``destination`` names ``source``'s inode, and that name survives a power loss."""
    os.link(source, destination)
    folder = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
