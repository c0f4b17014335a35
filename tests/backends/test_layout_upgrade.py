"""Upgrading a root kept in the first filesystem layout (a folder per session, records in
``session.json``): every session is adopted, none is lost, and an interrupted upgrade resumes."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from pathlib import Path

import pytest
from werkzeug.datastructures import Headers

from bits_wsgi import UploadDirectory, UploadServer
from bits_wsgi.backends import ComposedBackend, FilesystemBackend
from bits_wsgi.backends.files import DirectoryStore
from bits_wsgi.backends.filesystem import FileRecords, FlockLocker, adopt_folder_layout
from bits_wsgi.backends.sqlite import SqliteRecords
from bits_wsgi.errors import CorruptRecord
from bits_wsgi.protocol import PROTOCOL_GUID, Ack, parse
from bits_wsgi.server import RequestInfo
from bits_wsgi.session import SessionState
from bits_wsgi.testing import SESSION_A, new_record
from bits_wsgi.wsgi.body import BodyReader

SESSION_B = "C85B4E0A-9EB9-4114-BFA4-8A43B4710091"
SESSION_C = "0D2E6C34-6A44-4C4B-9E1B-4F1B2C3D4E5F"


def first_layout(root: Path) -> ComposedBackend:
    """The filesystem backend as the first layout composed it."""
    state = root / "BITS-Sessions"
    records = FileRecords(state)
    return ComposedBackend(
        records=records,
        blobs=DirectoryStore(state),
        locker=FlockLocker(state / "Locks", records.exists),
    )


def test_sessions_of_the_folder_layout_are_adopted(tmp_path: Path) -> None:
    old = first_layout(tmp_path)
    active = new_record(SESSION_A, owner="alice")
    old.create(active)
    old.write(SESSION_A, 0, [b"half of it"])
    active.total = 20
    old.save(active)
    closed = new_record(SESSION_B, owner="bob")
    old.create(closed)
    closed.state = SessionState.CLOSED
    old.save(closed, durable=True)
    old.create(new_record(SESSION_C))
    state = tmp_path / "BITS-Sessions"
    (state / "Requests" / f"{{{SESSION_C}}}" / "session.json").write_bytes(b"{")
    (state / "Requests" / ".staging-crashed").mkdir()

    new = FilesystemBackend(tmp_path)

    loaded = new.load(SESSION_A)
    assert loaded is not None
    assert (loaded.owner, loaded.total, loaded.received) == ("alice", 20, 10)
    assert new.data_path(SESSION_A).read_bytes() == b"half of it"
    assert new.active_sessions("alice") == [SESSION_A]
    assert new.active_sessions("bob") == []
    assert new.tombstone_count() == 1 and new.oldest_tombstones(5) == [SESSION_B]
    with pytest.raises(CorruptRecord):
        new.load(SESSION_C)
    assert sorted(p.name for p in (state / "Requests").iterdir()) == sorted(
        f"{{{key}}}.bin" for key in (SESSION_A, SESSION_B, SESSION_C)
    )
    assert not (state / "Owners").exists() and not (state / "Tombstones").exists()
    # and nothing is left to do the next time
    assert adopt_folder_layout(state, SqliteRecords(state / "sessions.sqlite3")) == 0


def test_an_interrupted_upgrade_finishes_the_next_time(tmp_path: Path) -> None:
    old = first_layout(tmp_path)
    for session_id, data in ((SESSION_A, b"first"), (SESSION_B, b"second")):
        old.create(new_record(session_id))
        old.write(session_id, 0, [data])
    state = tmp_path / "BITS-Sessions"
    # A crash after the records were adopted and one data file moved, before anything was
    # removed: the record of A is in both places, its bytes only in the new one.
    records = SqliteRecords(state / "sessions.sqlite3")
    records.create(new_record(SESSION_A))
    os.rename(
        state / "Requests" / f"{{{SESSION_A}}}" / "requestfile.bin",
        state / "Requests" / f"{{{SESSION_A}}}.bin",
    )

    new = FilesystemBackend(tmp_path)

    assert sorted(new.session_ids()) == sorted([SESSION_A, SESSION_B])
    assert new.data_path(SESSION_A).read_bytes() == b"first"
    assert new.data_path(SESSION_B).read_bytes() == b"second"
    assert [p.is_file() for p in (state / "Requests").iterdir()] == [True, True]


def _open_backend(root: str) -> None:
    FilesystemBackend(root)


def test_processes_starting_together_adopt_each_session_once(tmp_path: Path) -> None:
    old = first_layout(tmp_path)
    for n in range(40):
        session_id = f"{n:08X}-0000-4000-8000-000000000000"
        old.create(new_record(session_id))
        old.write(session_id, 0, [b"x" * n])
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_open_backend, args=(str(tmp_path),)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    new = FilesystemBackend(tmp_path)
    assert len(list(new.session_ids())) == 40
    assert all(new.data_size(f"{n:08X}-0000-4000-8000-000000000000") == n for n in range(40))


def _handle(server: UploadServer, headers: dict[str, str], body: bytes = b"") -> Ack:
    sent = Headers({**headers, "Content-Length": str(len(body))})
    request = RequestInfo(identity="", destination="dump.bin", url="http://bits.test/dump.bin")
    return server.handle(parse(sent), request, BodyReader(io.BytesIO(body).read, len(body)))


def test_an_upload_begun_before_the_upgrade_finishes_after_it(tmp_path: Path) -> None:
    payload = os.urandom(3000)
    directory = UploadDirectory(upload_dir=tmp_path)
    before = UploadServer(directory, first_layout(tmp_path), sweep_interval=None)
    created = _handle(
        before, {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL_GUID}
    )
    session = {"BITS-Packet-Type": "Fragment", "BITS-Session-Id": str(created.session_id)}
    first = _handle(before, {**session, "Content-Range": "bytes 0-999/3000"}, payload[:1000])
    assert first.status == 200

    after = UploadServer(directory, FilesystemBackend(tmp_path), sweep_interval=None)
    # The client resends from where it was: the server still knows what it holds.
    resent = _handle(after, {**session, "Content-Range": "bytes 0-1999/3000"}, payload[:2000])
    assert resent.status == 200
    assert resent.received == 2000
    last = _handle(after, {**session, "Content-Range": "bytes 2000-2999/3000"}, payload[2000:])
    assert last.status == 200
    closed = _handle(
        after, {"BITS-Packet-Type": "Close-Session", "BITS-Session-Id": str(created.session_id)}
    )
    assert closed.status == 200
    committed = (tmp_path / "dump.bin").read_bytes()
    assert hashlib.sha256(committed).hexdigest() == hashlib.sha256(payload).hexdigest()
