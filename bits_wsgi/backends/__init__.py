"""Session backends: where session records, upload bytes and locks live."""

from .base import Backend
from .filesystem import FilesystemBackend
from .memory import MemoryBackend

__all__ = ["Backend", "FilesystemBackend", "MemoryBackend"]
