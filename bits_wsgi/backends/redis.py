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
``lock:{ID}`` (a random token, expiring after ``lock_ttl`` unless its holder renews it),
``owner:{sha256}`` (the owner's active session ids), ``active`` (every active id, for the global
session cap), ``sessions`` (every id, for sweeps), ``tombstones`` (a sorted set of tombstone ids
by their time, for the tombstone budget).

The offset is the length of the data the blob store holds, as in the filesystem backend, so it
can never run ahead of the bytes. Locks are held with a TTL renewed by a thread while the holder
lives: a killed host's lock frees itself within ``lock_ttl`` seconds, and only the token's owner
can renew or release it.

Longer than 350 lines because the lease, the record and the writer mark are fenced together:
the Lua scripts, the lock with its renewal and takeover, and the saves that check them belong
to one invariant (§10.1) and would only be harder to check apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import BackendUnavailable, CorruptRecord, LeaseLost, LockTimeout
from ..paths import Destination
from ..session import SessionRecord, decode_record
from .base import BlobStore
from .files import DirectoryStore

#: Longer than the default session timeout (14 days) plus the tombstone retention (1 day).
DEFAULT_RECORD_TTL = 30 * 86_400
DEFAULT_LOCK_TTL = 10.0
_MISSING = object()

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
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
# Before its bytes change: still the holder? Then mark the data as open for writing, so that a
# holder taking over after this lease expires knows to rotate it (DirectoryStore.rotate).
_MARK_WRITER = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('set', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""
# After the bytes were written and the data closed: still the holder? Then the mark goes.
_UNMARK_WRITER = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
    return 0
end
if redis.call('get', KEYS[2]) == ARGV[1] then
    redis.call('del', KEYS[2])
end
return 1
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisBackend:
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
        self.blobs: BlobStore = (
            DirectoryStore(blobs) if isinstance(blobs, str | os.PathLike) else blobs
        )
        if client is None:
            import redis

            client = redis.Redis.from_url(url or "redis://127.0.0.1:6379/0")
        self.client = client
        self.prefix = prefix
        self.record_ttl = record_ttl
        self.lock_ttl = lock_ttl
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._fenced_save = client.register_script(_FENCED_SAVE)
        self._mark_writer = client.register_script(_MARK_WRITER)
        self._unmark_writer = client.register_script(_UNMARK_WRITER)
        # The lease token each thread holds for each session: a thread whose lease expired
        # must not find the next holder's token (even one in this same process).
        self._tokens = threading.local()
        # One thread renews every lock this process holds: a thread per packet costs more
        # than the packet's own Redis round trips.
        self._held: dict[str, str] = {}
        # The record read in the same round trip as the lock that guards it (see lock()).
        self._prefetched = threading.local()
        self._held_guard = threading.Lock()
        self._renewer: threading.Thread | None = None
        _LIVE.add(self)

    def _reset_threads(self) -> None:
        """No lock of the parent is held in a forked child, and no renewer thread runs there:
        the child starts afresh (redis-py renews its own connections after a fork)."""
        self._held = {}
        self._prefetched = threading.local()
        self._tokens = threading.local()
        self._held_guard = threading.Lock()
        self._renewer = None

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _owner_key(self, owner: str) -> str:
        return self._key("owner", hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32])

    # -- records ------------------------------------------------------------------------------

    def create(self, record: SessionRecord) -> None:
        self.blobs.create_data(record.id, record.destination)
        with _unavailable():
            pipe = self.client.pipeline()
            pipe.set(self._key("session", record.id), _encode(record), ex=self.record_ttl)
            pipe.sadd(self._owner_key(record.owner), record.id)
            pipe.sadd(self._key("active"), record.id)
            pipe.sadd(self._key("sessions"), record.id)
            pipe.execute()

    def load(self, session_id: str) -> SessionRecord | None:
        prefetched = getattr(self._prefetched, "records", {}).pop(session_id, _MISSING)
        if prefetched is not _MISSING:
            raw = prefetched
        else:
            with _unavailable():
                raw = self.client.get(self._key("session", session_id))
        if raw is None:
            return None
        return decode_record(session_id, raw, self.blobs.data_size)

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        # One Redis command replaces the record atomically (§10.2); how durable it is after a
        # Redis restart is Redis's persistence setting (AOF with fsync for the strongest).
        token = self._token(record.id)
        if token is not None:
            self._save_fenced(record, token)
            return
        with _unavailable():
            pipe = self.client.pipeline()
            pipe.set(self._key("session", record.id), _encode(record), ex=self.record_ttl)
            if record.state.is_tombstone:
                pipe.srem(self._owner_key(record.owner), record.id)
                pipe.srem(self._key("active"), record.id)
                pipe.zadd(self._key("tombstones"), {record.id: record.last_activity})
            pipe.execute()

    def _save_fenced(self, record: SessionRecord, token: str) -> None:
        keys = [
            self._key("lock", record.id),
            self._key("session", record.id),
            self._owner_key(record.owner),
            self._key("active"),
            self._key("tombstones"),
        ]
        tombstone = "1" if record.state.is_tombstone else "0"
        arguments = [token, _encode(record), self.record_ttl, tombstone, record.id]
        with _unavailable():
            saved = self._fenced_save(keys=keys, args=[*arguments, record.last_activity])
        if not saved:
            raise LeaseLost(f"session {record.id}: lock lost before the record was saved")

    def delete(self, session_id: str) -> None:
        self._fence(session_id)
        try:
            record = self.load(session_id)
        except CorruptRecord:
            record = None
        with _unavailable():
            pipe = self.client.pipeline()
            pipe.delete(self._key("session", session_id))
            pipe.srem(self._key("sessions"), session_id)
            pipe.srem(self._key("active"), session_id)
            pipe.zrem(self._key("tombstones"), session_id)
            pipe.delete(self._key("writer", session_id))
            if record is not None:
                pipe.srem(self._owner_key(record.owner), session_id)
            pipe.execute()
        self.blobs.delete_data(session_id)

    # -- bytes: the blob store's ---------------------------------------------------------------

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        token = self._token(session_id)
        if token is None:
            return self.blobs.write(session_id, offset, chunks)
        writer = self._key("writer", session_id)

        def fence() -> None:
            with _unavailable():
                held = self._mark_writer(
                    keys=[self._key("lock", session_id), writer], args=[token, self.record_ttl]
                )
            if not held:
                raise LeaseLost(f"session {session_id}: lock lost before the bytes changed")

        lock = self._key("lock", session_id)
        try:
            written = self.blobs.write(session_id, offset, chunks, fence=fence)
        except BaseException:
            # The data is closed again: no rotation is needed on its account any more.
            with contextlib.suppress(Exception):
                self._release(keys=[writer], args=[token])
            raise
        # Closed, and checked in the same round trip: bytes written after the lease expired
        # went to a file the next holder replaced, and must not be acknowledged.
        with _unavailable():
            held = self._unmark_writer(keys=[lock, writer], args=[token])
        if not held:
            raise LeaseLost(f"session {session_id}: lock lost while the bytes were written")
        return written

    def sync(self, session_id: str) -> None:
        self.blobs.sync(session_id)

    def data_size(self, session_id: str) -> int | None:
        return self.blobs.data_size(session_id)

    def destination_exists(self, destination: Destination) -> bool:
        return self.blobs.destination_exists(destination)

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None:
        self._fence(session_id)
        self.blobs.commit(session_id, destination, overwrite=overwrite)

    def discard_data(self, session_id: str) -> None:
        self._fence(session_id)
        self.blobs.discard_data(session_id)

    # -- fencing (PROTOCOL.md §10.1) ----------------------------------------------------------

    def _token(self, session_id: str) -> str | None:
        """The lease this thread holds on the session, if it holds one."""
        held: dict[str, str] = getattr(self._tokens, "held", {})
        return held.get(session_id)

    def _fence(self, session_id: str) -> None:
        """Raise ``LeaseLost`` if this thread held the session's lock and no longer does."""
        token = self._token(session_id)
        if token is None:
            return
        with _unavailable():
            current = self.client.get(self._key("lock", session_id))
        if current is None or _text(current) != token:
            raise LeaseLost(f"session {session_id}: lock lost")

    # -- locks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        key = self._key("lock", session_id)
        token = uuid.uuid4().hex
        ttl_ms = int(self.lock_ttl * 1000)
        deadline = time.monotonic() + timeout
        delay = 0.002
        with _unavailable():
            while True:
                # Take the lock and read the record in one round trip: a packet's first load
                # under the lock is then free (the record cannot change while we hold it).
                pipe = self.client.pipeline(transaction=False)
                pipe.set(key, token, nx=True, px=ttl_ms)
                pipe.get(self._key("session", session_id))
                pipe.get(self._key("writer", session_id))
                acquired, raw, stale_writer = pipe.execute()
                if acquired:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeout("session is busy")
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)
        if stale_writer is not None:
            # The last holder's lease expired with the data open for writing (a paused host):
            # it may still write or cut back through that descriptor. Give the data a new
            # inode first, so nothing it does can reach the session or what it commits.
            try:
                self.blobs.rotate(session_id)
                with _unavailable():
                    self._release(keys=[self._key("writer", session_id)], args=[stale_writer])
            except BaseException:
                with contextlib.suppress(Exception):
                    self._release(keys=[key], args=[token])
                raise
        records = getattr(self._prefetched, "records", None)
        if records is None:
            records = self._prefetched.records = {}
        records[session_id] = raw
        tokens = getattr(self._tokens, "held", None)
        if tokens is None:
            tokens = self._tokens.held = {}
        tokens[session_id] = token
        with self._held_guard:
            self._held[key] = token
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_held, name="bits-wsgi-lock-renew", daemon=True
                )
                self._renewer.start()
        try:
            yield
        finally:
            records.pop(session_id, None)
            tokens.pop(session_id, None)
            with self._held_guard:
                self._held.pop(key, None)
            with contextlib.suppress(Exception):
                self._release(keys=[key], args=[token])

    def _renew_held(self) -> None:
        """Renew held locks while their holders live, so a long fragment or notification keeps
        its lock; a dead host renews nothing, and its locks expire by their TTL."""
        ttl_ms = int(self.lock_ttl * 1000)
        while True:
            time.sleep(self.lock_ttl / 3)
            with self._held_guard:
                held = list(self._held.items())
            for key, token in held:
                with contextlib.suppress(Exception):
                    self._renew(keys=[key], args=[token, ttl_ms])

    # -- enumeration --------------------------------------------------------------------------

    def active_sessions(self, owner: str) -> list[str]:
        with _unavailable():
            members = self.client.smembers(self._owner_key(owner))
        return sorted(_text(member) for member in members)

    def active_count(self) -> int:
        with _unavailable():
            return int(self.client.scard(self._key("active")))

    def tombstone_count(self) -> int:
        with _unavailable():
            return int(self.client.zcard(self._key("tombstones")))

    def oldest_tombstones(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with _unavailable():
            members = self.client.zrange(self._key("tombstones"), 0, limit - 1)
        return [_text(member) for member in members]

    def session_ids(self) -> Iterator[str]:
        with _unavailable():
            members = list(self.client.sscan_iter(self._key("sessions"), count=1000))
        for member in members:
            yield _text(member)


_LIVE: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _reset_in_child() -> None:
    for backend in list(_LIVE):
        backend._reset_threads()


os.register_at_fork(after_in_child=_reset_in_child)


def _encode(record: SessionRecord) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Redis unreachable is a transient condition for the client (503), never lost progress."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise BackendUnavailable(f"redis: {exc}") from exc
        raise
