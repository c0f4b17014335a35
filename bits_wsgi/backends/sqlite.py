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
sessions, the active count and the oldest tombstones. Every process and thread opens its own
connection (SQLite's locks exclude processes; WAL lets readers run beside the one writer).

Durability: a ``durable`` save commits with ``synchronous=FULL`` (the WAL is fsynced before the
commit returns); other saves with ``NORMAL``, which in WAL mode survives a killed process and
after a power loss keeps the database consistent, losing at most the last such saves — as the
file store's non-durable saves do (their directory is not fsynced).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import BackendUnavailable
from ..session import SessionRecord, decode_record, encode_record

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
#: How long a writer waits for another process's write transaction (they last microseconds).
BUSY_TIMEOUT = 30.0


class SqliteRecords:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection, made anew in a forked child (connections must not cross
        a fork)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"sqlite: {exc}") from exc
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid, self._local.durable = db, os.getpid(), False
        return db

    def _write(self, sql: str, parameters: tuple[object, ...], *, durable: bool) -> int:
        db = self._db()
        if durable != self._local.durable:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._local.durable = durable
        return db.execute(sql, parameters).rowcount

    def create(self, record: SessionRecord) -> None:
        self._write(
            "INSERT INTO sessions (id, owner, tombstone, record) VALUES (?, ?, NULL, ?)",
            (record.id, record.owner, encode_record(record)),
            durable=False,
        )

    def load(self, session_id: str) -> SessionRecord | None:
        row = (
            self._db().execute("SELECT record FROM sessions WHERE id = ?", (session_id,)).fetchone()
        )
        return None if row is None else decode_record(session_id, row[0])

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
        found = self._db().execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,))
        return found.fetchone() is not None

    def active_sessions(self, owner: str) -> list[str]:
        rows = self._db().execute(
            "SELECT id FROM sessions WHERE owner = ? AND tombstone IS NULL ORDER BY id", (owner,)
        )
        return [row[0] for row in rows]

    def active_count(self) -> int:
        (count,) = (
            self._db().execute("SELECT count(*) FROM sessions WHERE tombstone IS NULL").fetchone()
        )
        return int(count)

    def session_ids(self) -> Iterator[str]:
        rows = self._db().execute("SELECT id FROM sessions").fetchall()
        yield from (row[0] for row in rows)

    def tombstone_count(self) -> int:
        (count,) = (
            self._db()
            .execute("SELECT count(*) FROM sessions WHERE tombstone IS NOT NULL")
            .fetchone()
        )
        return int(count)

    def oldest_tombstones(self, limit: int) -> list[str]:
        rows = self._db().execute(
            "SELECT id FROM sessions WHERE tombstone IS NOT NULL ORDER BY tombstone, id LIMIT ?",
            (max(0, limit),),
        )
        return [row[0] for row in rows]
