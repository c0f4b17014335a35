"""The shared backend contract, run against every backend that ships."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bits_wsgi.backends import Backend, FilesystemBackend, MemoryBackend
from bits_wsgi.testing import BackendContract

from ..support.s3 import new_bucket, s3_client


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


class TestRedisS3Backend(BackendContract):
    """Redis for records and locks, S3 (a real moto_server) for the bytes."""

    @pytest.fixture(autouse=True)
    def _servers(self, redis_url: str, s3_endpoint: str) -> None:
        self.redis_url = redis_url
        self.client = s3_client(s3_endpoint)
        self.bucket = new_bucket(s3_endpoint)

    def make_backend(self, root: Path) -> Backend:
        from bits_wsgi.backends.redis import RedisBackend
        from bits_wsgi.backends.s3 import S3Store

        store = S3Store(self.bucket, prefix="uploads", client=self.client)
        return RedisBackend(store, url=self.redis_url, prefix=f"t{uuid.uuid4().hex}")

    def read_destination(self, backend: Backend, root: Path, key: str) -> bytes | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=f"uploads/{key}")
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = got["Body"].read()
        return data

    def place_destination(self, backend: Backend, root: Path, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"uploads/{key}", Body=data)
