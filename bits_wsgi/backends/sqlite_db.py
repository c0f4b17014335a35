"""One SQLite database in WAL mode, one connection per process, shared by the stores kept in it
(session records, completion events, quota usage).

Each process opens one connection and its threads take turns on it (statements last
microseconds): one connection keeps its page cache across the packets of every thread, where a
connection per thread would find its cache stale after each other thread's write and read the
pages again. SQLite's locks exclude the other processes; WAL lets their readers run beside the
one writer.

Durability: a ``durable`` write commits with ``synchronous=FULL`` (the WAL is fsynced before the
commit returns); other writes with ``NORMAL``, which in WAL mode survives a killed process and
after a power loss keeps the database consistent, losing at most the last such writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable

#: How long a writer waits for another process's write transaction (they last microseconds).
BUSY_TIMEOUT = 30.0
#: Pages are read through a memory map rather than a read() each (bytes of address space,
#: not of memory: the map is the database file).
MMAP_SIZE = 256 * 1024 * 1024


class SqliteDatabase:
    def __init__(self, path: str | os.PathLike[str], schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._turn = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._durable = False
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(this()))
        self.add_schema(schema)

    def add_schema(self, schema: str) -> None:
        """WAL mode and the tables, one process at a time: workers that start together on a
        new root would otherwise meet in SQLite's switch to WAL, which answers "database is
        locked" at once instead of waiting (4–8 of 60 starts of four processes failed so)."""
        guard = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            with self.connection() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(schema)
        finally:
            os.close(guard)

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, this thread's turn on it, SQLite's failures translated."""
        with self._turn:
            try:
                yield self._db if self._db is not None else self._open()
            except sqlite3.Error as exc:
                raise _translation(exc) from exc

    def _open(self) -> sqlite3.Connection:
        """The process's connection, opened at its first statement (the caller has the turn)."""
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
        self._db, self._durable = db, False
        return db

    def durability(self, db: sqlite3.Connection, durable: bool) -> None:
        if durable != self._durable:
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    @contextlib.contextmanager
    def transaction(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the writer's lock taken before the first read, so
        what the transaction read is still true when it writes (claims, conditional counts)."""
        with self.connection() as db:
            self.durability(db, durable)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # write() and read() take their turn without connection()'s generator: they run for every
    # packet, and a generator-based context manager costs more than their statement.

    def write(self, sql: str, parameters: tuple[object, ...], *, durable: bool) -> int:
        with self._turn:
            try:
                db = self._db if self._db is not None else self._open()
                self.durability(db, durable)
                return db.execute(sql, parameters).rowcount
            except sqlite3.Error as exc:
                raise _translation(exc) from exc

    def read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[Any]:
        with self._turn:
            try:
                db = self._db if self._db is not None else self._open()
                return db.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise _translation(exc) from exc


#: Connections a forked child inherited: kept open, never used. Closing one in the child could
#: checkpoint and remove the log under the parent's feet (connections must not cross a fork).
_INHERITED: list[sqlite3.Connection] = []


def _forked(database: SqliteDatabase | None) -> None:
    """In a forked child: a lock no thread holds (the forking one may have held it) and a
    connection of the child's own at the next statement."""
    if database is None:
        return
    if database._db is not None:
        _INHERITED.append(database._db)
    database._turn = threading.Lock()
    database._db = None


def _translation(exc: sqlite3.Error) -> Exception:
    """SQLite's failures as the server answers them: a full disk is ENOSPC (500, disk full),
    an I/O error is EIO, and anything else (a lock held past the busy timeout, a database that
    cannot be opened) makes the store unavailable (503), never an internal error."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return OSError(errno.ENOSPC, f"sqlite: {exc}")
    if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
        return OSError(errno.EIO, f"sqlite: {exc}")
    return BackendUnavailable(f"sqlite: {exc}")
