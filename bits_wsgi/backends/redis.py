"""Shared session state for several hosts: records, locks and indexes in Redis, bytes in a blob
store every host reaches: a directory every host mounts (a path, the DirectoryStore layout) or
S3-compatible object storage (``bits_wsgi.backends.s3.S3Store``).

::

    from bits_wsgi.backends.redis import RedisBackend

    backend = RedisBackend("/mnt/shared/bits", url="redis://redis.internal:6379/0")
    app = BITSMiddleware(app, "/mnt/shared/uploads", backend=backend)

    backend = RedisBackend(S3Store("bits-uploads"), url="redis://redis.internal:6379/0")

redis-py is imported only when no client is passed (``pip install 'bits-wsgi[redis]'``); a
ready client (Sentinel, Cluster, with TLS...) can be injected with ``client=``.

Keys, below ``prefix``: ``session:{ID}`` (the record as JSON, expiring after ``record_ttl``),
``owner:{sha256}`` (the owner's active session ids), ``active`` (every active id, for the global
session cap), ``sessions`` (every id, for sweeps), ``tombstones`` (a sorted set of tombstone ids
by their time, for the tombstone budget); ``lock:{ID}`` and ``writer:{ID}`` are the lease's
(``redis_lease``); the outbox's and the quota counts' are ``redis_ledgers``'.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

from ..errors import LeaseLost
from ..session import SessionRecord, decode_record, encode_record
from .base import BlobStore
from .composed import ComposedBackend
from .files import DirectoryStore
from .redis_lease import DEFAULT_LOCK_TTL, RedisKeys, RedisLocker, text, unavailable
from .redis_ledgers import RedisOutbox, RedisUsage

#: Longer than the default session timeout (14 days) plus the tombstone retention (1 day).
DEFAULT_RECORD_TTL = 30 * 86_400
# A record save by a lock holder happens only while it still holds the lease (§10.1 fencing):
# KEYS lock, session, owner index, active set, tombstones; ARGV token, record, TTL,
# tombstone ("1"/"0"), id, tombstone time.
_FENCED_SAVE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[3])
if ARGV[4] == '1' then
    redis.call('srem', KEYS[3], ARGV[5])
    redis.call('srem', KEYS[4], ARGV[5])
    redis.call('zadd', KEYS[5], ARGV[6], ARGV[5])
end
return 1
"""


class RedisBackend(ComposedBackend):
    """``RedisRecords`` and a ``RedisLocker`` on one Redis, with the bytes in ``blobs``: a
    directory every host mounts (a path) or another blob store (``S3Store``)."""

    def __init__(
        self,
        blobs: str | os.PathLike[str] | BlobStore,
        *,
        url: str | None = None,
        client: Any = None,
        prefix: str = "bits-wsgi",
        record_ttl: int = DEFAULT_RECORD_TTL,
        lock_ttl: float = DEFAULT_LOCK_TTL,
    ) -> None:
        if client is None:
            import redis

            client = redis.Redis.from_url(url or "redis://127.0.0.1:6379/0")
        self.client = client
        self.prefix = prefix
        self.record_ttl = record_ttl
        self.lock_ttl = lock_ttl
        keys = RedisKeys(prefix)
        locker = RedisLocker(client, keys, lock_ttl=lock_ttl, mark_ttl=record_ttl)
        super().__init__(
            records=RedisRecords(client, keys, record_ttl=record_ttl, locker=locker),
            blobs=DirectoryStore(blobs) if isinstance(blobs, str | os.PathLike) else blobs,
            locker=locker,
            outbox=RedisOutbox(client, prefix),
            usage=RedisUsage(client, prefix),
        )


class RedisRecords:
    """Records and their indexes in Redis. With a ``locker``, a holder's saves are fenced by
    its lease, in the same command (§10.1), and its first load is the record read with it."""

    def __init__(
        self,
        client: Any,
        keys: RedisKeys,
        *,
        record_ttl: int = DEFAULT_RECORD_TTL,
        locker: RedisLocker | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.record_ttl = record_ttl
        self._locker = locker
        self._fenced_save = client.register_script(_FENCED_SAVE)

    def _owner_key(self, owner: str) -> str:
        return self.keys.owner(hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32])

    def create(self, record: SessionRecord) -> None:
        with unavailable():
            pipe = self.client.pipeline()
            pipe.set(self.keys.session(record.id), encode_record(record), ex=self.record_ttl)
            pipe.sadd(self._owner_key(record.owner), record.id)
            pipe.sadd(self.keys.active, record.id)
            pipe.sadd(self.keys.sessions, record.id)
            pipe.execute()

    def load(self, session_id: str) -> SessionRecord | None:
        lease = None if self._locker is None else self._locker.lease(session_id)
        prefetched = None if lease is None else lease.take_record()
        if prefetched is not None:
            (raw,) = prefetched
        else:
            with unavailable():
                raw = self.client.get(self.keys.session(session_id))
        if raw is None:
            return None
        return decode_record(session_id, raw)

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        # One Redis command replaces the record atomically (§10.2); how durable it is after a
        # Redis restart is Redis's persistence setting (AOF with fsync for the strongest).
        lease = None if self._locker is None else self._locker.lease(record.id)
        if lease is not None:
            self._save_fenced(record, lease.token)
            return
        with unavailable():
            pipe = self.client.pipeline()
            pipe.set(self.keys.session(record.id), encode_record(record), ex=self.record_ttl)
            if record.state.is_tombstone:
                pipe.srem(self._owner_key(record.owner), record.id)
                pipe.srem(self.keys.active, record.id)
                pipe.zadd(self.keys.tombstones, {record.id: record.last_activity})
            pipe.execute()

    def _save_fenced(self, record: SessionRecord, token: str) -> None:
        keys = [
            self.keys.lock(record.id),
            self.keys.session(record.id),
            self._owner_key(record.owner),
            self.keys.active,
            self.keys.tombstones,
        ]
        tombstone = "1" if record.state.is_tombstone else "0"
        arguments = [token, encode_record(record), self.record_ttl, tombstone, record.id]
        with unavailable():
            saved = self._fenced_save(keys=keys, args=[*arguments, record.last_activity])
        if not saved:
            raise LeaseLost(f"session {record.id}: lock lost before the record was saved")

    def delete(self, session_id: str, record: SessionRecord | None) -> None:
        with unavailable():
            pipe = self.client.pipeline()
            pipe.delete(self.keys.session(session_id))
            pipe.srem(self.keys.sessions, session_id)
            pipe.srem(self.keys.active, session_id)
            pipe.zrem(self.keys.tombstones, session_id)
            if record is not None:
                pipe.srem(self._owner_key(record.owner), session_id)
            pipe.execute()

    def exists(self, session_id: str) -> bool:
        with unavailable():
            return bool(self.client.exists(self.keys.session(session_id)))

    def active_sessions(self, owner: str) -> list[str]:
        with unavailable():
            members = self.client.smembers(self._owner_key(owner))
        return sorted(text(member) for member in members)

    def active_count(self) -> int:
        with unavailable():
            return int(self.client.scard(self.keys.active))

    def tombstone_count(self) -> int:
        with unavailable():
            return int(self.client.zcard(self.keys.tombstones))

    def oldest_tombstones(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with unavailable():
            members = self.client.zrange(self.keys.tombstones, 0, limit - 1)
        return [text(member) for member in members]

    def session_ids(self) -> Iterator[str]:
        with unavailable():
            members = list(self.client.sscan_iter(self.keys.sessions, count=1000))
        for member in members:
            yield text(member)
