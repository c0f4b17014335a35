"""Session backends: where session records, upload bytes and locks live."""

import os

from .base import Backend
from .filesystem import FilesystemBackend
from .memory import MemoryBackend

__all__ = ["Backend", "FilesystemBackend", "MemoryBackend", "default_backend"]


def default_backend(upload_dir: str | os.PathLike[str]) -> Backend:
    """Sessions as files under ``upload_dir/BITS-Sessions/`` (which it creates, root included)."""
    return FilesystemBackend(upload_dir)
