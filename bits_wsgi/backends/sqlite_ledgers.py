"""The outbox of completion events and the quota counts in SQLite, beside the session records
(``FilesystemBackend`` keeps all three in ``sessions.sqlite3``).

A claim is one ``BEGIN IMMEDIATE`` transaction: SQLite's writer lock orders the claimers of every
process, and a claimed entry's ``due`` moves past its lease, so no other claimer sees it until
the lease lapses. An event is added with ``synchronous=FULL``: it is on disk before the Ack.
"""

from __future__ import annotations

import json
import os

from .base import EntryState, OutboxEntry
from .sqlite_db import SqliteDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    due REAL NOT NULL,
    last_error TEXT NOT NULL,
    delivered_to TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
CREATE TABLE IF NOT EXISTS usage (
    owner TEXT NOT NULL,
    day INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (day, owner)
) WITHOUT ROWID;
"""
_COLUMNS = "id, body, created, state, attempts, due, last_error, delivered_to"


def _database(where: str | os.PathLike[str] | SqliteDatabase) -> SqliteDatabase:
    if isinstance(where, SqliteDatabase):
        where.add_schema(_SCHEMA)
        return where
    return SqliteDatabase(where, _SCHEMA)


def _entry(row: tuple[str, bytes, float, EntryState, int, float, str, str]) -> OutboxEntry:
    entry_id, body, created, state, attempts, due, error, delivered = row
    return OutboxEntry(
        id=entry_id,
        body=bytes(body),
        created=created,
        state=state,
        attempts=attempts,
        when=due,
        last_error=error,
        delivered_to=tuple(json.loads(delivered)),
    )


class SqliteOutbox:
    def __init__(self, where: str | os.PathLike[str] | SqliteDatabase) -> None:
        self.database = _database(where)

    def add(self, entry_id: str, body: bytes, now: float) -> bool:
        added = self.database.write(
            "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, 'pending', 0, ?, '', '[]')",
            (entry_id, body, now, now),
            durable=True,
        )
        return added == 1

    def claim(self, now: float, lease: float, limit: int) -> list[OutboxEntry]:
        with self.database.transaction(durable=False) as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND due <= ?"
                " ORDER BY due LIMIT ?",
                (now, max(0, limit)),
            ).fetchall()
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, due = ? WHERE id = ?",
                [(now + lease, row[0]) for row in rows],
            )
        return [_entry((*row[:4], row[4] + 1, now + lease, *row[6:])) for row in rows]

    def settle(
        self,
        entry: OutboxEntry,
        state: EntryState,
        when: float,
        *,
        error: str = "",
        delivered_to: tuple[str, ...] = (),
    ) -> bool:
        changed = self.database.write(
            "UPDATE outbox SET state = ?, due = ?, last_error = ?, delivered_to = ?"
            " WHERE id = ? AND state = 'pending' AND attempts = ?",
            (state, when, error, json.dumps(list(delivered_to)), entry.id, entry.attempts),
            durable=state != "pending",
        )
        return changed == 1

    def get(self, entry_id: str) -> OutboxEntry | None:
        rows = self.database.read(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (entry_id,))
        return _entry(rows[0]) if rows else None

    def entries(self, *, dead_only: bool = False, limit: int = 100) -> list[OutboxEntry]:
        where = "WHERE state = 'dead'" if dead_only else ""
        rows = self.database.read(
            f"SELECT {_COLUMNS} FROM outbox {where} ORDER BY created DESC, id LIMIT ?",
            (max(0, limit),),
        )
        return [_entry(row) for row in rows]

    def replay(self, entry_id: str, now: float) -> bool:
        changed = self.database.write(
            "UPDATE outbox SET state = 'pending', attempts = 0, due = ?, last_error = '',"
            " delivered_to = '[]' WHERE id = ?",
            (now, entry_id),
            durable=True,
        )
        return changed == 1

    def prune(self, settled_before: float) -> int:
        return self.database.write(
            "DELETE FROM outbox WHERE state != 'pending' AND due < ?",
            (settled_before,),
            durable=False,
        )


class SqliteUsage:
    def __init__(self, where: str | os.PathLike[str] | SqliteDatabase) -> None:
        self.database = _database(where)

    def take(self, owner: str, day: int, count: int, limit: int) -> bool:
        if count > limit:
            return False
        # One statement: the conditional add is atomic across processes without a read first.
        changed = self.database.write(
            "INSERT INTO usage (owner, day, bytes) VALUES (?, ?, ?)"
            " ON CONFLICT (day, owner) DO UPDATE SET bytes = bytes + excluded.bytes"
            " WHERE bytes + excluded.bytes <= ?",
            (owner, day, count, limit),
            durable=False,
        )
        return changed == 1

    def give_back(self, owner: str, day: int, count: int) -> None:
        self.database.write(
            "UPDATE usage SET bytes = max(0, bytes - ?) WHERE day = ? AND owner = ?",
            (count, day, owner),
            durable=False,
        )

    def used(self, owner: str, day: int) -> int:
        rows = self.database.read(
            "SELECT bytes FROM usage WHERE day = ? AND owner = ?", (day, owner)
        )
        return int(rows[0][0]) if rows else 0

    def day_totals(self, day: int, limit: int = 100) -> dict[str, int]:
        rows = self.database.read(
            "SELECT owner, bytes FROM usage WHERE day = ? ORDER BY bytes DESC, owner LIMIT ?",
            (day, max(0, limit)),
        )
        return {owner: int(count) for owner, count in rows}

    def forget_before(self, day: int) -> None:
        self.database.write("DELETE FROM usage WHERE day < ?", (day,), durable=False)
