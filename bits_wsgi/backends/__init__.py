"""Session backends: where session records, upload bytes and locks live (records + blobs +
a locker, composed by ``ComposedBackend``)."""

import os

from .base import Backend, BlobStore, LocalFiles, Locker, RecordStore
from .composed import ComposedBackend
from .filesystem import FilesystemBackend
from .memory import MemoryBackend

__all__ = [
    "Backend",
    "BlobStore",
    "ComposedBackend",
    "FilesystemBackend",
    "LocalFiles",
    "Locker",
    "MemoryBackend",
    "RecordStore",
    "default_backend",
]


def default_backend(upload_dir: str | os.PathLike[str]) -> Backend:
    """Sessions as files under ``upload_dir/BITS-Sessions/`` (which it creates, root included)."""
    return FilesystemBackend(upload_dir)
