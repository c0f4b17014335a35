"""The outbox and the quota counts in this process's memory (``MemoryBackend``): for tests and
single-process development; like its sessions, they do not survive a restart."""

from __future__ import annotations

import dataclasses
import threading

from .base import EntryState, OutboxEntry


class MemoryOutbox:
    def __init__(self) -> None:
        self._entries: dict[str, OutboxEntry] = {}
        self._guard = threading.Lock()

    def add(self, entry_id: str, body: bytes, now: float) -> bool:
        with self._guard:
            if entry_id in self._entries:
                return False
            self._entries[entry_id] = OutboxEntry(entry_id, body, now, "pending", 0, now)
            return True

    def claim(self, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        with self._guard:
            due = sorted(
                (e for e in self._entries.values() if e.state == "pending" and e.when <= now),
                key=lambda entry: entry.when,
            )[: max(0, limit)]
            claimed = [
                dataclasses.replace(entry, attempts=entry.attempts + 1, when=now + lease)
                for entry in due
            ]
            self._entries.update((entry.id, entry) for entry in claimed)
            return claimed

    def settle(
        self,
        entry: OutboxEntry,
        state: EntryState,
        when: float,
        *,
        error: str = "",
        delivered_to: tuple[str, ...] = (),
    ) -> bool:
        with self._guard:
            stored = self._entries.get(entry.id)
            if stored is None or stored.state != "pending" or stored.attempts != entry.attempts:
                return False
            self._entries[entry.id] = dataclasses.replace(
                stored, state=state, when=when, last_error=error, delivered_to=delivered_to
            )
            return True

    def get(self, entry_id: str) -> OutboxEntry | None:
        with self._guard:
            return self._entries.get(entry_id)

    def entries(self, *, dead_only: bool = False, limit: int = 100) -> list[OutboxEntry]:
        with self._guard:
            chosen = [e for e in self._entries.values() if not dead_only or e.state == "dead"]
        chosen.sort(key=lambda entry: entry.id)
        chosen.sort(key=lambda entry: entry.created, reverse=True)
        return chosen[: max(0, limit)]

    def replay(self, entry_id: str, now: float) -> bool:
        with self._guard:
            stored = self._entries.get(entry_id)
            if stored is None:
                return False
            self._entries[entry_id] = OutboxEntry(
                stored.id, stored.body, stored.created, "pending", 0, now
            )
            return True

    def prune(self, settled_before: float) -> int:
        with self._guard:
            gone = [
                entry.id
                for entry in self._entries.values()
                if entry.state != "pending" and entry.when < settled_before
            ]
            for entry_id in gone:
                del self._entries[entry_id]
            return len(gone)


class MemoryUsage:
    def __init__(self) -> None:
        self._bytes: dict[tuple[int, str], int] = {}
        self._guard = threading.Lock()

    def take(self, owner: str, day: int, count: int, limit: int) -> bool:
        with self._guard:
            total = self._bytes.get((day, owner), 0) + count
            if total > limit:
                return False
            self._bytes[(day, owner)] = total
            return True

    def give_back(self, owner: str, day: int, count: int) -> None:
        with self._guard:
            if (day, owner) in self._bytes:
                self._bytes[(day, owner)] = max(0, self._bytes[(day, owner)] - count)

    def used(self, owner: str, day: int) -> int:
        with self._guard:
            return self._bytes.get((day, owner), 0)

    def day_totals(self, day: int, limit: int = 100) -> dict[str, int]:
        with self._guard:
            rows = [(owner, count) for (d, owner), count in self._bytes.items() if d == day]
        rows.sort(key=lambda row: (-row[1], row[0]))
        return dict(rows[: max(0, limit)])

    def forget_before(self, day: int) -> None:
        with self._guard:
            for key in [key for key in self._bytes if key[0] < day]:
                del self._bytes[key]
