"""Session records in one SQLite database in WAL mode: a record store with a few operations per
save instead of a file, a temp file and a rename each (issue: the cost of a packet).

::

    from bits_wsgi.backends import ComposedBackend
    from bits_wsgi.backends.files import DirectoryStore
    from bits_wsgi.backends.filesystem import FlockLocker
    from bits_wsgi.backends.sqlite import SqliteRecords

    records = SqliteRecords(state / "sessions.sqlite3")
    backend = ComposedBackend(
        records=records,
        blobs=DirectoryStore(state),
        locker=FlockLocker(state / "Locks", records.exists),
    )

One row per session: its id, its owner, the time it became a tombstone (NULL while active), and
the record as ``session.encode_record`` writes it. Partial indexes answer the owner's active
sessions, the active count and the oldest tombstones. The database, its one connection per
process and what a durable save means are ``sqlite_db.SqliteDatabase``'s; the filesystem
backend keeps its completion events and quota counts in the same database.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from ..session import SessionRecord, decode_record, encode_record
from .sqlite_db import SqliteDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    tombstone REAL,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS active_by_owner ON sessions (owner, id) WHERE tombstone IS NULL;
CREATE INDEX IF NOT EXISTS tombstones_by_age ON sessions (tombstone) WHERE tombstone IS NOT NULL;
"""
#: Records a process keeps decoded, by their stored bytes (a middle fragment writes no record,
#: so the next one reads the same bytes and needs no JSON decoding).
DECODED_CACHE = 1024


class SqliteRecords:
    def __init__(self, path: str | os.PathLike[str] | SqliteDatabase) -> None:
        if isinstance(path, SqliteDatabase):
            self.database = path
            self.database.add_schema(_SCHEMA)
        else:
            self.database = SqliteDatabase(path, _SCHEMA)
        self.path = self.database.path
        self._write = self.database.write
        self._read = self.database.read
        self._decoded: OrderedDict[str, tuple[bytes, SessionRecord]] = OrderedDict()
        self._decoded_guard = threading.Lock()

    def create(self, record: SessionRecord) -> None:
        self._write(
            "INSERT INTO sessions (id, owner, tombstone, record) VALUES (?, ?, NULL, ?)",
            (record.id, record.owner, encode_record(record)),
            durable=False,
        )

    def adopt(self, rows: Iterable[tuple[str, str, float | None, bytes]]) -> None:
        """Take records stored elsewhere, as ``(id, owner, tombstone time or None, stored
        form)``, durably and in one transaction; an id already here keeps its row, so an
        interrupted adoption can simply run again."""
        with self.database.transaction(durable=True) as db:
            db.executemany(
                "INSERT OR IGNORE INTO sessions (id, owner, tombstone, record) VALUES (?, ?, ?, ?)",
                rows,
            )

    def load(self, session_id: str) -> SessionRecord | None:
        rows = self._read("SELECT record FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            return None
        raw: bytes = rows[0][0]
        with self._decoded_guard:
            known = self._decoded.get(session_id)
            if known is not None and known[0] == raw:
                self._decoded.move_to_end(session_id)
                return copy.copy(known[1])  # a copy: the caller changes its record
        record = decode_record(session_id, raw)
        with self._decoded_guard:
            self._decoded[session_id] = (raw, copy.copy(record))
            while len(self._decoded) > DECODED_CACHE:
                self._decoded.popitem(last=False)
        return record

    def save(self, record: SessionRecord, *, durable: bool = False) -> None:
        tombstone = record.last_activity if record.state.is_tombstone else None
        self._write(
            "UPDATE sessions SET tombstone = ?, record = ? WHERE id = ?",
            (tombstone, encode_record(record), record.id),
            durable=durable,
        )

    def delete(self, session_id: str, record: SessionRecord | None) -> None:
        self._write("DELETE FROM sessions WHERE id = ?", (session_id,), durable=False)

    def exists(self, session_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM sessions WHERE id = ?", (session_id,)))

    def active_sessions(self, owner: str) -> list[str]:
        rows = self._read(
            "SELECT id FROM sessions WHERE owner = ? AND tombstone IS NULL ORDER BY id", (owner,)
        )
        return [row[0] for row in rows]

    def active_count(self) -> int:
        return int(self._read("SELECT count(*) FROM sessions WHERE tombstone IS NULL")[0][0])

    def session_ids(self) -> Iterator[str]:
        yield from (row[0] for row in self._read("SELECT id FROM sessions"))

    def tombstone_count(self) -> int:
        return int(self._read("SELECT count(*) FROM sessions WHERE tombstone IS NOT NULL")[0][0])

    def oldest_tombstones(self, limit: int) -> list[str]:
        rows = self._read(
            "SELECT id FROM sessions WHERE tombstone IS NOT NULL ORDER BY tombstone, id LIMIT ?",
            (max(0, limit),),
        )
        return [row[0] for row in rows]
