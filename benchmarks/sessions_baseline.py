"""The least a durable session server does per packet, as a WSGI app: the floor of the design.

``baseline_commit`` (benchmarks/apps.py) keeps no sessions. A BITS server must: the client's
next packet may reach another worker process, after a crash or a restart, so every session
lives in a store that all processes share and that outlives them. This app is the filesystem
backend's design reduced to its operations, with none of the protocol's checks (no validation
order, no owner or destination checks, no offset table, no expiry, no tombstone rules, no
events, no log): what is left is the price of the sessions themselves.

- Create-Session: a new id, a row in SQLite (WAL, ``synchronous=NORMAL``, one connection per
  process, the project's schema and statements), an empty data file.
- Fragment: the session's byte-range lock, its row read, the bytes written at their offset;
  with the last byte the data fsynced, linked to the destination and its folder fsynced
  (``baseline_commit``'s commit) and the row updated (before it, the offset is the data's
  length, as in the project, so other fragments write no row).
- Close-Session: the lock, the row read, the row made a tombstone, the data file removed.

Run it as ``gunicorn benchmarks.sessions_baseline:app`` with ``$BENCH_ROOT`` set (the
benchmark runner's ``baseline-sessions``), or in-process through ``benchmarks/packet_cost.py
--store wsgi-baseline-sessions``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bits_wsgi.backends.range_lock import _FLOCK, F_OFD_SETLK, slot
from bits_wsgi.backends.sqlite import _SCHEMA
from bits_wsgi.protocol import PROTOCOL_GUID

from .durable import link_durably, write_body


class Sessions:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "BITS-Sessions"
        (self.state / "Requests").mkdir(parents=True, exist_ok=True)
        self.lock_file = str(self.state / "baseline.lock")
        os.close(os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600))
        self.database = self.state / "baseline.sqlite3"
        self._turn = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0  # a forked worker opens its own connection
        guard = os.open(self.state, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            with self.db() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        finally:
            os.close(guard)

    @contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        with self._turn:
            if self._db is None or self._pid != os.getpid():
                self._db = sqlite3.connect(
                    self.database, timeout=30, isolation_level=None, check_same_thread=False
                )
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._pid = os.getpid()
            yield self._db

    def data(self, session: str) -> str:
        return f"{self.state}/Requests/{session}.bin"

    @contextmanager
    def locked(self, session: str) -> Iterator[dict[str, Any]]:
        fd = os.open(self.lock_file, os.O_RDWR)
        try:
            request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, slot(session), 1, 0)
            fcntl.fcntl(fd, F_OFD_SETLK, request)  # uncontended here: one client per session
            with self.db() as db:
                (row,) = db.execute("SELECT record FROM sessions WHERE id = ?", (session,))
            yield json.loads(row[0])
        finally:
            os.close(fd)

    def save(self, session: str, record: dict[str, Any], tombstone: float | None = None) -> None:
        with self.db() as db:
            db.execute(
                "UPDATE sessions SET tombstone = ?, record = ? WHERE id = ?",
                (tombstone, json.dumps(record), session),
            )

    def create(self, destination: str) -> str:
        session = str(uuid.uuid4()).upper()
        record = {"destination": destination, "received": 0, "state": "receiving"}
        with self.db() as db:
            db.execute(
                "INSERT INTO sessions (id, owner, tombstone, record) VALUES (?, '', NULL, ?)",
                (session, json.dumps(record)),
            )
        os.close(os.open(self.data(session), os.O_WRONLY | os.O_CREAT, 0o644))
        return session

    def fragment(self, session: str, environ: dict[str, Any]) -> int:
        spec = environ["HTTP_CONTENT_RANGE"].split()[1]
        offset = int(spec.split("-", 1)[0])
        total = int(spec.rsplit("/", 1)[1])
        remaining = int(environ["CONTENT_LENGTH"])
        read = environ["wsgi.input"].read
        with self.locked(session) as record:
            fd = os.open(self.data(session), os.O_WRONLY)
            try:
                offset = write_body(fd, read, offset, remaining)
                if offset == total:
                    os.fsync(fd)
                    self.publish(session, record["destination"])
            finally:
                os.close(fd)
            if offset == total:  # before, the offset is the data's length, as the project's
                record["received"] = offset
                self.save(session, record)
        return offset

    def publish(self, session: str, destination: str) -> None:
        target = self.root / destination.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        link_durably(self.data(session), target)

    def close(self, session: str) -> None:
        with self.locked(session) as record:
            record["state"] = "closed"
            self.save(session, record, tombstone=1.0)
            os.unlink(self.data(session))


def make_app(root: Path) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    store = Sessions(root)

    def answer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        kind = environ.get("HTTP_BITS_PACKET_TYPE", "")
        headers = [("BITS-Packet-Type", "Ack"), ("Content-Length", "0")]
        if kind == "Create-Session":
            session = store.create(environ["PATH_INFO"])
            headers += [("BITS-Protocol", PROTOCOL_GUID), ("BITS-Session-Id", "{" + session + "}")]
        else:
            session = environ["HTTP_BITS_SESSION_ID"].strip("{}").upper()
            headers.append(("BITS-Session-Id", "{" + session + "}"))
            if kind == "Fragment":
                received = store.fragment(session, environ)
                headers.append(("BITS-Received-Content-Range", str(received)))
            else:
                store.close(session)
        start_response("200 OK", headers)
        return []

    return answer


#: For gunicorn: the sessions live below ``$BENCH_ROOT``.
app = make_app(Path(os.environ.get("BENCH_ROOT", "/tmp/bits-bench")))
