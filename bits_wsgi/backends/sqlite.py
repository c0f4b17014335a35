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
sessions, the active count and the oldest tombstones. Each process opens one connection and
its threads take turns on it (statements last microseconds): one connection keeps its page
cache across the packets of every thread, where a connection per thread would find its cache
stale after each other thread's write and read the pages again. SQLite's locks exclude the
other processes; WAL lets their readers run beside the one writer.

Durability: a ``durable`` save commits with ``synchronous=FULL`` (the WAL is fsynced before the
commit returns); other saves with ``NORMAL``, which in WAL mode survives a killed process and
after a power loss keeps the database consistent, losing at most the last such saves — as the
file store's non-durable saves do (their directory is not fsynced).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

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
#: Pages are read through a memory map rather than a read() each (bytes of address space,
#: not of memory: the map is the database file).
MMAP_SIZE = 256 * 1024 * 1024


class SqliteRecords:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._turn = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._durable = False
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(this()))
        self._set_up()

    def _set_up(self) -> None:
        """WAL mode and the tables, one process at a time: workers that start together on a
        new root would otherwise meet in SQLite's switch to WAL, which answers "database is
        locked" at once instead of waiting (4–8 of 60 starts of four processes failed so)."""
        guard = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            with self._connection() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        finally:
            os.close(guard)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, this thread's turn on it, SQLite's failures translated."""
        with self._turn, _translated():
            if self._db is None:
                db = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
                self._db, self._durable = db, False
            yield self._db

    def _durability(self, db: sqlite3.Connection, durable: bool) -> None:
        if durable != self._durable:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _write(self, sql: str, parameters: tuple[object, ...], *, durable: bool) -> int:
        with self._connection() as db:
            self._durability(db, durable)
            return db.execute(sql, parameters).rowcount

    def _read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[Any]:
        with self._connection() as db:
            return db.execute(sql, parameters).fetchall()

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
        with self._connection() as db:
            self._durability(db, True)
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR IGNORE INTO sessions (id, owner, tombstone, record)"
                    " VALUES (?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def load(self, session_id: str) -> SessionRecord | None:
        rows = self._read("SELECT record FROM sessions WHERE id = ?", (session_id,))
        return decode_record(session_id, rows[0][0]) if rows else None

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


#: Connections a forked child inherited: kept open, never used. Closing one in the child could
#: checkpoint and remove the log under the parent's feet (connections must not cross a fork).
_INHERITED: list[sqlite3.Connection] = []


def _forked(records: SqliteRecords | None) -> None:
    """In a forked child: a lock no thread holds (the forking one may have held it) and a
    connection of the child's own at the next statement."""
    if records is None:
        return
    if records._db is not None:
        _INHERITED.append(records._db)
    records._turn = threading.Lock()
    records._db = None


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """SQLite's failures as the server answers them: a full disk is ENOSPC (500, disk full),
    an I/O error is EIO, and anything else (a lock held past the busy timeout, a database that
    cannot be opened) makes the store unavailable (503), never an internal error."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            raise OSError(errno.ENOSPC, f"sqlite: {exc}") from exc
        if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
            raise OSError(errno.EIO, f"sqlite: {exc}") from exc
        raise BackendUnavailable(f"sqlite: {exc}") from exc
