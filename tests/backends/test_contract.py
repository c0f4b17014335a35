"""The shared backend contract, run against every backend that ships."""

from __future__ import annotations

from pathlib import Path

from bits_wsgi.backends import Backend, FilesystemBackend, MemoryBackend
from bits_wsgi.testing import BackendContract


class TestFilesystemBackend(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return FilesystemBackend(root)


class TestMemoryBackend(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return MemoryBackend()
