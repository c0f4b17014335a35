"""The contract suites, run against every backend that ships and every part it is made of."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi.backends import Backend, FilesystemBackend, MemoryBackend
from bits_wsgi.backends.base import BlobStore, Locker, Outbox, RecordStore, UsageLedger
from bits_wsgi.backends.files import DirectoryStore
from bits_wsgi.backends.filesystem import FileRecords, FlockLocker
from bits_wsgi.backends.memory import MemoryBlobs, MemoryRecords, ThreadLocker
from bits_wsgi.backends.memory_ledgers import MemoryOutbox, MemoryUsage
from bits_wsgi.backends.range_lock import RangeLocker
from bits_wsgi.backends.sqlite import SqliteRecords
from bits_wsgi.backends.sqlite_ledgers import SqliteOutbox, SqliteUsage
from bits_wsgi.testing import (
    BackendContract,
    BlobStoreContract,
    LockerContract,
    OutboxContract,
    RecordStoreContract,
    UsageLedgerContract,
)

from ..support.s3 import new_bucket, s3_client
from .test_layout_upgrade import first_layout

# -- the parts -------------------------------------------------------------------------------


class TestFileRecords(RecordStoreContract):
    def make_records(self, root: Path) -> RecordStore:
        return FileRecords(root / "state")


class TestMemoryRecords(RecordStoreContract):
    def make_records(self, root: Path) -> RecordStore:
        return MemoryRecords()


class TestSqliteRecords(RecordStoreContract):
    def make_records(self, root: Path) -> RecordStore:
        return SqliteRecords(root / "state" / "sessions.sqlite3")


class TestRedisRecords(RecordStoreContract):
    """Against a real redis-server; every test gets its own key prefix."""

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def make_records(self, root: Path) -> RecordStore:
        import redis

        from bits_wsgi.backends.redis import RedisRecords
        from bits_wsgi.backends.redis_lease import RedisKeys

        client = redis.Redis.from_url(self.redis_url)
        return RedisRecords(client, RedisKeys(f"t{uuid.uuid4().hex}"))


class TestDirectoryStore(BlobStoreContract):
    """The folder layout (a folder per session), as the Redis backend's shared directory."""

    def make_blobs(self, root: Path) -> BlobStore:
        return DirectoryStore(root.parent / "state")


class TestFlatDirectoryStore(BlobStoreContract):
    """The flat layout (a file per session), as the filesystem backend keeps it."""

    def make_blobs(self, root: Path) -> BlobStore:
        return DirectoryStore(root.parent / "state", flat=True)


class TestMemoryBlobs(BlobStoreContract):
    def make_blobs(self, root: Path) -> BlobStore:
        return MemoryBlobs()


class S3Destinations:
    """Commits land in the bucket, below the store's prefix."""

    client: Any
    bucket: str

    def read_destination(self, root: Path, key: str) -> bytes | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=f"uploads/{key}")
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = got["Body"].read()
        return data

    def place_destination(self, root: Path, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"uploads/{key}", Body=data)


class TestS3Store(S3Destinations, BlobStoreContract):
    """Against a real moto_server."""

    @pytest.fixture(autouse=True)
    def _s3(self, s3_endpoint: str) -> None:
        self.client = s3_client(s3_endpoint)
        self.bucket = new_bucket(s3_endpoint)

    def make_blobs(self, root: Path) -> BlobStore:
        from bits_wsgi.backends.s3 import S3Store

        return S3Store(self.bucket, prefix="uploads", client=self.client)


class TestFlockLocker(LockerContract):
    def make_locker(self, root: Path, known: Callable[[str], bool]) -> Locker:
        return FlockLocker(root / "Locks", known)


class TestRangeLocker(LockerContract):
    def make_locker(self, root: Path, known: Callable[[str], bool]) -> Locker:
        return RangeLocker(root / "sessions.lock")


class TestThreadLocker(LockerContract):
    def make_locker(self, root: Path, known: Callable[[str], bool]) -> Locker:
        return ThreadLocker(known)


class TestRedisLocker(LockerContract):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def make_locker(self, root: Path, known: Callable[[str], bool]) -> Locker:
        import redis

        from bits_wsgi.backends.redis_lease import RedisKeys, RedisLocker

        client = redis.Redis.from_url(self.redis_url)
        return RedisLocker(client, RedisKeys(f"t{uuid.uuid4().hex}"), mark_ttl=60)


# -- the backends that ship ----------------------------------------------------------------------


class TestFilesystemBackend(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return FilesystemBackend(root)


class TestFirstLayoutBackend(BackendContract):
    """The filesystem backend's first layout: record files, a folder and a lock file per
    session (still read at start-up, see test_layout_upgrade.py)."""

    def make_backend(self, root: Path) -> Backend:
        return first_layout(root)


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


class TestRedisS3Backend(S3Destinations, BackendContract):
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


# -- the ledgers -----------------------------------------------------------------------------


class TestMemoryOutbox(OutboxContract):
    def make_outbox(self, root: Path) -> Outbox:
        return MemoryOutbox()


class TestSqliteOutbox(OutboxContract):
    """A second view is another connection, as another worker process has."""

    def make_outbox(self, root: Path) -> Outbox:
        return SqliteOutbox(root / "state" / "sessions.sqlite3")

    def make_second_view(self, root: Path, outbox: Outbox) -> Outbox:
        return SqliteOutbox(root / "state" / "sessions.sqlite3")


class TestRedisOutbox(OutboxContract):
    """Against a real redis-server; a second view is another client, as another host has."""

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.prefix = f"t{uuid.uuid4().hex}"

    def make_outbox(self, root: Path) -> Outbox:
        import redis

        from bits_wsgi.backends.redis_ledgers import RedisOutbox

        return RedisOutbox(redis.Redis.from_url(self.redis_url), self.prefix)

    def make_second_view(self, root: Path, outbox: Outbox) -> Outbox:
        return self.make_outbox(root)


class TestMemoryUsage(UsageLedgerContract):
    def make_usage(self, root: Path) -> UsageLedger:
        return MemoryUsage()


class TestSqliteUsage(UsageLedgerContract):
    def make_usage(self, root: Path) -> UsageLedger:
        return SqliteUsage(root / "state" / "sessions.sqlite3")


class TestRedisUsage(UsageLedgerContract):
    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def make_usage(self, root: Path) -> UsageLedger:
        import redis

        from bits_wsgi.backends.redis_ledgers import RedisUsage

        return RedisUsage(redis.Redis.from_url(self.redis_url), f"t{uuid.uuid4().hex}")
