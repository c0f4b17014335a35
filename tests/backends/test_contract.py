"""The shared backend contract, run against every backend that ships."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bits_wsgi.backends import Backend, FilesystemBackend, MemoryBackend
from bits_wsgi.testing import BackendContract


class TestFilesystemBackend(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return FilesystemBackend(root)


class TestMemoryBackend(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return MemoryBackend()


class TestRedisBackend(BackendContract):
    """Against a real redis-server; every test gets its own key prefix."""

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def make_backend(self, root: Path) -> Backend:
        from bits_wsgi.backends.redis import RedisBackend

        return RedisBackend(root / "shared", url=self.redis_url, prefix=f"t{uuid.uuid4().hex}")
