"""Session locks in Redis for several hosts: leases with a TTL, renewed while their holder lives.

``lock:{ID}`` holds a random token and expires after ``lock_ttl`` seconds unless its holder
renews it (one thread per process renews every lock the process holds): a killed host's lock
frees itself, and only the token's owner can renew or release it. A live holder can still lose
its lease (a paused host), so each lease is also a :class:`~bits_wsgi.backends.base.Fence`
(PROTOCOL.md §10.1): the holder checks it before every change, marks the data as being written
(``writer:{ID}``) while it writes, and a holder taking over from an expired writer is told to
rotate the data. Record saves are fenced by ``RedisRecords`` in the same Redis command.

Leases belong to threads because the server's calls carry none (a thread holds a session's lock
for its whole packet). The record is read in the lock's own round trip and kept in the lease,
so a packet's first load under the lock costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import BackendUnavailable, LeaseLost
from .waiting import retry_until

DEFAULT_LOCK_TTL = 10.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Before its bytes change: still the holder? Then mark the data as open for writing, so that a
# holder taking over after this lease expires knows to rotate it (BlobStore.rotate).
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


class RedisKeys:
    """The key names below ``prefix``, for the records and the locks alike."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.active = f"{prefix}:active"
        self.sessions = f"{prefix}:sessions"
        self.tombstones = f"{prefix}:tombstones"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def lock(self, session_id: str) -> str:
        return f"{self.prefix}:lock:{session_id}"

    def writer(self, session_id: str) -> str:
        return f"{self.prefix}:writer:{session_id}"

    def owner(self, owner_digest: str) -> str:
        return f"{self.prefix}:owner:{owner_digest}"


class Lease:
    """One thread's lock on one session: its token, the record read with it, and the fence."""

    def __init__(
        self, locker: RedisLocker, session_id: str, token: str, record: Any, stale: Any
    ) -> None:
        self._locker = locker
        self._session_id = session_id
        self.token = token
        self._record: tuple[Any] | None = (record,)
        self._stale_token = stale
        self.stale_writer = stale is not None

    def take_record(self) -> tuple[Any] | None:
        """The stored record as read with the lock (a 1-tuple of the raw value or None), the
        first time only: later loads read Redis again. None once taken."""
        record, self._record = self._record, None
        return record

    def check(self) -> None:
        keys = self._locker.keys
        with unavailable():
            current = self._locker.client.get(keys.lock(self._session_id))
        if current is None or text(current) != self.token:
            raise LeaseLost(f"session {self._session_id}: lock lost")

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[], None]]:
        locker, keys = (
            self._locker,
            [
                self._locker.keys.lock(self._session_id),
                self._locker.keys.writer(self._session_id),
            ],
        )

        def mark() -> None:
            with unavailable():
                held = locker.mark_writer(keys=keys, args=[self.token, locker.mark_ttl])
            if not held:
                raise LeaseLost(f"session {self._session_id}: lock lost before the bytes changed")

        try:
            yield mark
        except BaseException:
            # The data is closed again: no rotation is needed on its account any more.
            with contextlib.suppress(Exception):
                locker.release(keys=keys[1:], args=[self.token])
            raise
        # Closed, and checked in the same round trip: bytes written after the lease expired
        # went to data the next holder replaced, and must not be acknowledged.
        with unavailable():
            held = locker.unmark_writer(keys=keys, args=[self.token])
        if not held:
            raise LeaseLost(f"session {self._session_id}: lock lost while the bytes were written")

    def stale_writer_replaced(self) -> None:
        with unavailable():
            self._locker.release(
                keys=[self._locker.keys.writer(self._session_id)], args=[self._stale_token]
            )
        self.stale_writer = False


class RedisLocker:
    def __init__(
        self, client: Any, keys: RedisKeys, *, lock_ttl: float = DEFAULT_LOCK_TTL, mark_ttl: int
    ) -> None:
        self.client = client
        self.keys = keys
        self.lock_ttl = lock_ttl
        self.mark_ttl = mark_ttl
        self.renew = client.register_script(_RENEW)
        self.release = client.register_script(_RELEASE)
        self.mark_writer = client.register_script(_MARK_WRITER)
        self.unmark_writer = client.register_script(_UNMARK_WRITER)
        self._reset_threads()
        _LIVE.add(self)

    def _reset_threads(self) -> None:
        """No lock of the parent is held in a forked child, and no renewer thread runs there:
        the child starts afresh (redis-py renews its own connections after a fork)."""
        # Each thread's leases: a thread whose lease expired must not find the next holder's
        # token (even one in this same process).
        self._leases = threading.local()
        # One thread renews every lock this process holds: a thread per packet costs more
        # than the packet's own Redis round trips.
        self._held: dict[str, str] = {}
        self._held_guard = threading.Lock()
        self._renewer: threading.Thread | None = None

    def lease(self, session_id: str) -> Lease | None:
        """The lease this thread holds on the session, if it holds one."""
        leases: dict[str, Lease] = getattr(self._leases, "held", {})
        return leases.get(session_id)

    def fence(self, session_id: str) -> Lease | None:
        return self.lease(session_id)

    def forget(self, session_id: str) -> None:
        with unavailable():
            self.client.delete(self.keys.writer(session_id))

    @contextlib.contextmanager
    def lock(self, session_id: str, timeout: float) -> Iterator[None]:
        key = self.keys.lock(session_id)
        token = uuid.uuid4().hex
        ttl_ms = int(self.lock_ttl * 1000)
        deadline = time.monotonic() + timeout

        def attempt() -> tuple[Any, Any] | None:
            # Take the lock and read the record (and any stale writer's mark) in one round
            # trip: the record cannot change while we hold the lock.
            pipe = self.client.pipeline(transaction=False)
            pipe.set(key, token, nx=True, px=ttl_ms)
            pipe.get(self.keys.session(session_id))
            pipe.get(self.keys.writer(session_id))
            acquired, record, stale_writer = pipe.execute()
            return (record, stale_writer) if acquired else None

        with unavailable():
            record, stale_writer = retry_until(deadline, attempt)
        leases = getattr(self._leases, "held", None)
        if leases is None:
            leases = self._leases.held = {}
        leases[session_id] = Lease(self, session_id, token, record, stale_writer)
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
            leases.pop(session_id, None)
            with self._held_guard:
                self._held.pop(key, None)
            with contextlib.suppress(Exception):
                self.release(keys=[key], args=[token])

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
                    self.renew(keys=[key], args=[token, ttl_ms])


_LIVE: weakref.WeakSet[RedisLocker] = weakref.WeakSet()


def _reset_in_child() -> None:
    for locker in list(_LIVE):
        locker._reset_threads()


os.register_at_fork(after_in_child=_reset_in_child)


def text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """Redis unreachable is a transient condition for the client (503), never lost progress."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise BackendUnavailable(f"redis: {exc}") from exc
        raise
