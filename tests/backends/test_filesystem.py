"""What only the filesystem backend promises: restarts, processes, corruption, crashes."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi.backends import FilesystemBackend
from bits_wsgi.backends.filesystem import FileRecords
from bits_wsgi.errors import CorruptRecord, LockTimeout
from bits_wsgi.session import SessionRecord, encode_record
from bits_wsgi.testing import SESSION_A, new_record


def test_sessions_survive_a_new_backend_on_the_same_root(tmp_path: Path) -> None:
    first = FilesystemBackend(tmp_path)
    first.create(new_record())
    first.write(SESSION_A, 0, [b"abc"])
    record = new_record()
    record.received, record.total = 3, 10
    first.save(record)
    second = FilesystemBackend(tmp_path)
    assert second.load(SESSION_A) == record
    assert second.data_size(SESSION_A) == 3


def test_state_lives_under_bits_sessions(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path)
    backend.create(new_record())
    backend.write(SESSION_A, 0, [b"abc"])
    state = tmp_path / "BITS-Sessions"
    assert (state / "Requests" / f"{{{SESSION_A}}}.bin").read_bytes() == b"abc"
    assert [p.name for p in (state / "Requests").iterdir()] == [f"{{{SESSION_A}}}.bin"]
    with sqlite3.connect(state / "sessions.sqlite3") as db:
        (stored,) = db.execute("SELECT record FROM sessions WHERE id = ?", (SESSION_A,))
    assert json.loads(stored[0])["id"] == SESSION_A


def _store_raw(root: Path, session_id: str, raw: bytes, *, new_id: str | None = None) -> None:
    with contextlib.closing(sqlite3.connect(root / "BITS-Sessions" / "sessions.sqlite3")) as db:
        db.execute(
            "UPDATE sessions SET record = ?, id = ? WHERE id = ?",
            (raw, new_id or session_id, session_id),
        )
        db.commit()


@pytest.mark.parametrize(
    "content", [b"", b"{", b"\xff\xfe", b"[]", b'{"id": 1}', b"null", b'"text"']
)
def test_corrupt_records_raise_corrupt_record(tmp_path: Path, content: bytes) -> None:
    backend = FilesystemBackend(tmp_path)
    backend.create(new_record())
    _store_raw(tmp_path, SESSION_A, content)
    with pytest.raises(CorruptRecord):
        backend.load(SESSION_A)


def test_record_naming_another_session_is_corrupt(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path)
    backend.create(new_record())
    other = "C85B4E0A-9EB9-4114-BFA4-8A43B4710091"
    _store_raw(tmp_path, SESSION_A, encode_record(new_record()), new_id=other)
    with pytest.raises(CorruptRecord):
        backend.load(other)


def test_offset_is_clamped_to_the_data_after_a_power_loss(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path)
    backend.create(new_record())
    backend.write(SESSION_A, 0, [b"x" * 100])
    record = new_record()
    record.received, record.total = 100, 1000
    backend.save(record)
    # the record reached the disk, the data did not
    os.truncate(backend.data_path(SESSION_A), 40)
    loaded = backend.load(SESSION_A)
    assert loaded is not None and loaded.received == 40


def _hold_lock(root: str, ready: multiprocessing.synchronize.Event, release_after: float) -> None:
    backend = FilesystemBackend(root)
    with backend.lock(SESSION_A, 5.0):
        ready.set()
        time.sleep(release_after)


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    FilesystemBackend(tmp_path).create(new_record())  # an unknown session holds no lock file
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_hold_lock, args=(str(tmp_path), ready, 1.5))
    child.start()
    try:
        assert ready.wait(30)
        backend = FilesystemBackend(tmp_path)
        with pytest.raises(LockTimeout), backend.lock(SESSION_A, 0.1):
            pass
        # and it is taken as soon as the other process lets go
        with backend.lock(SESSION_A, 10.0):
            pass
    finally:
        child.join(30)
    assert child.exitcode == 0


def test_waiter_does_not_keep_a_lock_on_a_deleted_lock_file(tmp_path: Path) -> None:
    """delete() unlinks the lock file under the lock; a waiter must lock the new file."""
    backend = FilesystemBackend(tmp_path)
    backend.create(new_record())
    acquired = threading.Event()
    inside: list[str] = []

    def waiter() -> None:
        with backend.lock(SESSION_A, 5.0):
            acquired.set()
            inside.append("waiter")
            time.sleep(0.2)
            inside.append("waiter-out")

    with backend.lock(SESSION_A, 1.0):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        backend.delete(SESSION_A)
        # The id exists again (a restored record): deleted, an unknown id excludes nothing.
        backend.create(new_record())
    assert acquired.wait(5)
    # a third party now locking the same id must wait for the waiter, not run beside it
    with backend.lock(SESSION_A, 5.0):
        inside.append("third")
    thread.join()
    assert inside == ["waiter", "waiter-out", "third"]


def test_stale_staging_folders_are_swept(tmp_path: Path) -> None:
    backend = FileRecords(tmp_path / "BITS-Sessions")  # the first layout's records
    staging = tmp_path / "BITS-Sessions" / "Requests" / ".staging-deadbeef"
    staging.mkdir()
    fresh = tmp_path / "BITS-Sessions" / "Requests" / ".staging-fresh"
    fresh.mkdir()
    old = time.time() - 7200
    os.utime(staging, (old, old))
    assert list(backend.session_ids()) == []
    assert not staging.exists()
    assert fresh.exists()


def test_a_forked_child_uses_the_records_while_a_parent_thread_holds_the_connection(
    tmp_path: Path,
) -> None:
    """The process's one connection is taken in turns: a child forked while another thread has
    its turn must neither wait for that turn forever nor use the parent's connection."""
    from bits_wsgi.backends.sqlite import SqliteRecords

    records = SqliteRecords(tmp_path / "sessions.sqlite3")
    records.create(new_record())
    held, release = threading.Event(), threading.Event()

    def hold_the_turn() -> None:
        with records.database.connection():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_turn)
    holder.start()
    assert held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            try:
                record = records.load(SESSION_A)
                os._exit(0 if record is not None and record.id == SESSION_A else 1)
            except BaseException:
                os._exit(2)
        deadline = time.monotonic() + 30
        while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        if waited == (0, 0):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child waited for a turn its parent's thread held")
        assert os.waitstatus_to_exitcode(waited[1]) == 0
    finally:
        release.set()
        holder.join(10)
    # the parent's connection still works after the child exited
    assert records.exists(SESSION_A)


def test_threads_share_the_records_without_losing_a_write(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path)
    records = [new_record(session_id=f"{n:08X}-0000-4000-8000-000000000000") for n in range(200)]
    failures: list[BaseException] = []

    def create(chunk: list[SessionRecord]) -> None:
        try:
            for record in chunk:
                backend.create(record)
                assert backend.load(record.id) is not None
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=create, args=(records[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert sorted(FilesystemBackend(tmp_path).session_ids()) == sorted(r.id for r in records)


def _open_backend(root: str, start: Any, outcomes: Any) -> None:
    start.wait(30)
    try:
        FilesystemBackend(root)
        outcomes.put("")
    except BaseException as exc:  # reported to the parent
        outcomes.put(repr(exc))


def test_workers_starting_together_on_a_new_root_all_start(tmp_path: Path) -> None:
    """gunicorn's workers open the backend at the same moment; on a new root SQLite's switch to
    WAL refused the losers at once ("database is locked"), and a worker that fails to boot
    stops the whole server. Several rounds, as the race is lost only now and then."""
    context = multiprocessing.get_context("fork")
    for round_ in range(30):
        root = tmp_path / str(round_)
        start, outcomes = context.Event(), context.Queue()
        workers = [
            context.Process(target=_open_backend, args=(str(root), start, outcomes))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        start.set()
        failures = [failure for failure in (outcomes.get(timeout=60) for _ in workers) if failure]
        for worker in workers:
            worker.join(30)
        assert failures == [], f"round {round_}: {failures}"
