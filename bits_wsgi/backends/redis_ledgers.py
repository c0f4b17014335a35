"""The outbox of completion events and the quota counts in Redis, for a farm of hosts.

Keys, below the backend's prefix: ``outbox:{ID}`` (a hash: the event and its delivery state),
``outbox:due`` (pending ids by the time they are due), ``outbox:created`` (every id by its
time, for listings), ``outbox:dead`` (dead ids by their time), ``outbox:settled`` (delivered
and dead ids by the time they settled, for pruning); ``usage:{day}`` (a hash of bytes per
identity, expiring two days after its day).

Each step that reads and then writes is one Lua script, so it is atomic across hosts: a claim
moves the entries it takes past their lease in ``outbox:due``, and a settle applies only while
the entry is still pending with the attempt count of its claim. How durable an added event is
after a Redis restart is Redis's persistence setting (AOF with ``appendfsync always`` for
the strongest), as for the records.
"""

from __future__ import annotations

import json
from typing import Any

from .base import EntryState, OutboxEntry
from .redis_lease import text, unavailable

_ADD = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
redis.call('hset', KEYS[1], 'body', ARGV[2], 'created', ARGV[3], 'state', 'pending',
           'attempts', 0, 'due', ARGV[3], 'last_error', '', 'delivered_to', '[]')
redis.call('zadd', KEYS[2], ARGV[3], ARGV[1])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[1])
return 1
"""
# KEYS due; ARGV now, lease end, limit, key prefix of an entry
_CLAIM = """
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
    redis.call('zadd', KEYS[1], ARGV[2], id)
    redis.call('hincrby', ARGV[4] .. id, 'attempts', 1)
    redis.call('hset', ARGV[4] .. id, 'due', ARGV[2])
end
return ids
"""
# KEYS entry, due, dead, settled; ARGV id, attempts, state, when, error, delivered_to
_SETTLE = """
if redis.call('hget', KEYS[1], 'state') ~= 'pending' then return 0 end
if redis.call('hget', KEYS[1], 'attempts') ~= ARGV[2] then return 0 end
redis.call('hset', KEYS[1], 'state', ARGV[3], 'due', ARGV[4], 'last_error', ARGV[5],
           'delivered_to', ARGV[6])
if ARGV[3] == 'pending' then
    redis.call('zadd', KEYS[2], ARGV[4], ARGV[1])
else
    redis.call('zrem', KEYS[2], ARGV[1])
    redis.call('zadd', KEYS[4], ARGV[4], ARGV[1])
    if ARGV[3] == 'dead' then redis.call('zadd', KEYS[3], ARGV[4], ARGV[1]) end
end
return 1
"""
# KEYS entry, due, dead, settled; ARGV id, now
_REPLAY = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], 'state', 'pending', 'attempts', 0, 'due', ARGV[2],
           'last_error', '', 'delivered_to', '[]')
redis.call('zadd', KEYS[2], ARGV[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zrem', KEYS[4], ARGV[1])
return 1
"""
# KEYS usage hash; ARGV owner, count, limit, ttl
_TAKE = """
local total = tonumber(redis.call('hget', KEYS[1], ARGV[1]) or '0') + tonumber(ARGV[2])
if total > tonumber(ARGV[3]) then return 0 end
redis.call('hincrby', KEYS[1], ARGV[1], ARGV[2])
redis.call('expire', KEYS[1], ARGV[4])
return 1
"""
_FIELDS = ("body", "created", "state", "attempts", "due", "last_error", "delivered_to")
#: A day's counts are kept for two more days (the status page shows today's).
USAGE_TTL = 3 * 86_400


class RedisOutbox:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self._entry = f"{prefix}:outbox:"
        self._due = f"{prefix}:outbox:due"
        self._created = f"{prefix}:outbox:created"
        self._dead = f"{prefix}:outbox:dead"
        self._settled = f"{prefix}:outbox:settled"
        self._add = client.register_script(_ADD)
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self._replay = client.register_script(_REPLAY)

    def _keys(self, entry_id: str) -> list[str]:
        return [self._entry + entry_id, self._due, self._dead, self._settled]

    def add(self, entry_id: str, body: bytes, now: float) -> bool:
        keys = [self._entry + entry_id, self._due, self._created]
        with unavailable():
            return bool(self._add(keys=keys, args=[entry_id, body, repr(now)]))

    def claim(self, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        if limit <= 0:
            return []
        with unavailable():
            ids = self._claim(
                keys=[self._due], args=[repr(now), repr(now + lease), limit, self._entry]
            )
        found = (self.get(text(entry_id)) for entry_id in ids)
        return [entry for entry in found if entry is not None]

    def settle(
        self,
        entry: OutboxEntry,
        state: EntryState,
        when: float,
        *,
        error: str = "",
        delivered_to: tuple[str, ...] = (),
    ) -> bool:
        args = [entry.id, entry.attempts, state, repr(when), error, json.dumps(delivered_to)]
        with unavailable():
            return bool(self._settle(keys=self._keys(entry.id), args=args))

    def get(self, entry_id: str) -> OutboxEntry | None:
        with unavailable():
            values = self.client.hmget(self._entry + entry_id, _FIELDS)
        if values[0] is None:
            return None
        body, created, state, attempts, due, error, delivered = values
        return OutboxEntry(
            id=entry_id,
            body=bytes(body),
            created=float(created),
            state=text(state),  # type: ignore[arg-type]
            attempts=int(attempts),
            when=float(due),
            last_error=error.decode("utf-8") if isinstance(error, bytes) else error,
            delivered_to=tuple(json.loads(delivered)),
        )

    def entries(self, *, dead_only: bool = False, limit: int = 100) -> list[OutboxEntry]:
        if limit <= 0:
            return []
        with unavailable():
            ids = self.client.zrevrange(self._dead if dead_only else self._created, 0, limit - 1)
        found = (self.get(text(entry_id)) for entry_id in ids)
        return [entry for entry in found if entry is not None]

    def replay(self, entry_id: str, now: float) -> bool:
        with unavailable():
            return bool(self._replay(keys=self._keys(entry_id), args=[entry_id, repr(now)]))

    def prune(self, settled_before: float) -> int:
        with unavailable():
            ids = [
                text(i) for i in self.client.zrangebyscore(self._settled, "-inf", settled_before)
            ]
            if not ids:
                return 0
            pipe = self.client.pipeline()
            pipe.delete(*(self._entry + entry_id for entry_id in ids))
            for index in (self._settled, self._created, self._dead):
                pipe.zrem(index, *ids)
            pipe.execute()
        return len(ids)


class RedisUsage:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self._prefix = f"{prefix}:usage:"
        self._take = client.register_script(_TAKE)

    def take(self, owner: str, day: int, count: int, limit: int) -> bool:
        with unavailable():
            taken = self._take(
                keys=[self._prefix + str(day)], args=[owner, count, limit, USAGE_TTL]
            )
        return bool(taken)

    def give_back(self, owner: str, day: int, count: int) -> None:
        with unavailable():
            self.client.hincrby(self._prefix + str(day), owner, -count)

    def used(self, owner: str, day: int) -> int:
        with unavailable():
            value = self.client.hget(self._prefix + str(day), owner)
        return max(0, int(value)) if value is not None else 0

    def day_totals(self, day: int, limit: int = 100) -> dict[str, int]:
        with unavailable():
            counts = self.client.hgetall(self._prefix + str(day))
        rows = sorted(
            ((owner.decode("utf-8"), max(0, int(count))) for owner, count in counts.items()),
            key=lambda row: (-row[1], row[0]),
        )
        return dict(rows[: max(0, limit)])

    def forget_before(self, day: int) -> None:
        """Nothing to do: each day's counts expire on their own (``USAGE_TTL``)."""
