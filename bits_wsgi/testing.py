"""The contract every backend fulfils, as a pytest suite any backend can run.

Subclass :class:`BackendContract` in a test module and say how to build the backend::

    from bits_wsgi.testing import BackendContract

    class TestMyBackend(BackendContract):
        def make_backend(self, root):
            return MyBackend(root, ...)

Requires pytest (the ``test`` extra).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .backends.base import Backend, local_files
from .errors import DestinationExists, LockTimeout
from .paths import Destination
from .session import SessionRecord, SessionState, Trigger

SESSION_A = "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"
SESSION_B = "C85B4E0A-9EB9-4114-BFA4-8A43B4710091"
DESTINATION = "dir/f.bin"


def new_record(session_id: str = SESSION_A, owner: str = "alice") -> SessionRecord:
    return SessionRecord(
        id=session_id,
        owner=owner,
        destination=DESTINATION,
        url="http://example.test/dir/f.bin",
        state=SessionState.RECEIVING,
        created=1_000.0,
        last_activity=1_000.0,
    )


class _Failing:
    """A body that yields some bytes and then fails, like a client that disconnects."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise OSError("client went away")


class BackendContract:
    """The shared backend tests. ``make_backend`` builds a fresh backend below ``root``."""

    def make_backend(self, root: Path) -> Backend:
        raise NotImplementedError

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        root = tmp_path / "root"
        root.mkdir()
        return root

    @pytest.fixture
    def backend(self, root: Path) -> Backend:
        return self.make_backend(root)

    # -- records ------------------------------------------------------------------------------

    def test_unknown_session_loads_as_none(self, backend: Backend) -> None:
        assert backend.load(SESSION_A) is None

    def test_created_session_loads_back(self, backend: Backend) -> None:
        backend.create(new_record())
        assert backend.load(SESSION_A) == new_record()
        assert backend.data_size(SESSION_A) == 0

    def test_save_replaces_the_record(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"12345"])
        changed = new_record()
        changed.received, changed.total, changed.last_activity = 5, 10, 2_000.0
        backend.save(changed)
        assert backend.load(SESSION_A) == changed

    def test_loaded_records_are_copies(self, backend: Backend) -> None:
        backend.create(new_record())
        loaded = backend.load(SESSION_A)
        assert loaded is not None
        loaded.received = 99
        again = backend.load(SESSION_A)
        assert again is not None and again.received == 0

    # -- data ---------------------------------------------------------------------------------

    def test_write_appends_at_the_offset(self, backend: Backend) -> None:
        backend.create(new_record())
        assert backend.write(SESSION_A, 0, [b"abc", b"def"]) == 6
        assert backend.write(SESSION_A, 6, [b"gh"]) == 2
        assert backend.data_size(SESSION_A) == 8

    def test_write_cuts_stray_bytes_past_the_offset(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"0123456789"])
        backend.write(SESSION_A, 4, [b"XY"])
        assert backend.data_size(SESSION_A) == 6
        assert self._committed_bytes(backend, root) == b"0123XY"

    def test_failed_write_is_cut_by_the_next(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"abc"])
        with pytest.raises(OSError):
            backend.write(SESSION_A, 3, _Failing(b"partial"))
        backend.write(SESSION_A, 3, [b"def"])
        assert self._committed_bytes(backend, root) == b"abcdef"

    def test_the_offset_is_the_length_of_the_data(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"1234567"])  # no save: the data alone moves the offset
        loaded = backend.load(SESSION_A)
        assert loaded is not None and loaded.received == 7

    def test_a_failed_write_is_cut_back_at_once(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"abc"])
        with pytest.raises(OSError):
            backend.write(SESSION_A, 3, _Failing(b"partial"))
        assert backend.data_size(SESSION_A) == 3
        loaded = backend.load(SESSION_A)
        assert loaded is not None and loaded.received == 3

    def test_sync_keeps_the_data(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"x" * 1000])
        backend.sync(SESSION_A)
        assert backend.data_size(SESSION_A) == 1000

    # -- commit -------------------------------------------------------------------------------
    # Commits go to the record's destination (``new_record``: "dir/f.bin"). Backends that
    # publish somewhere other than files below ``root`` override the two helpers below.

    def read_destination(self, backend: Backend, root: Path, key: str) -> bytes | None:
        """The bytes committed at ``key``, or None if nothing is there."""
        path = root.joinpath(*key.split("/"))
        return path.read_bytes() if path.exists() else None

    def place_destination(self, backend: Backend, root: Path, key: str, data: bytes) -> None:
        """Put someone else's file at ``key``."""
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def _committed_bytes(self, backend: Backend, root: Path) -> bytes | None:
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=True)
        return self.read_destination(backend, root, DESTINATION)

    def test_commit_publishes_the_exact_bytes(self, backend: Backend, root: Path) -> None:
        payload = os.urandom(300_000)
        backend.create(new_record())
        backend.write(SESSION_A, 0, [payload[:100_000], payload[100_000:]])
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        committed = self.read_destination(backend, root, DESTINATION)
        assert committed is not None
        assert hashlib.sha256(committed).digest() == hashlib.sha256(payload).digest()
        path = root / DESTINATION
        if path.exists():  # a file backend: an ordinary file, and no staging files left
            assert not stat.S_IMODE(path.stat().st_mode) & 0o111
            assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []

    def test_commit_of_an_empty_upload(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        assert self.read_destination(backend, root, DESTINATION) == b""

    def test_destination_exists(self, backend: Backend, root: Path) -> None:
        assert not backend.destination_exists(Destination(root, DESTINATION))
        self.place_destination(backend, root, DESTINATION, b"theirs")
        assert backend.destination_exists(Destination(root, DESTINATION))

    def test_commit_refuses_an_existing_destination(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"mine"])
        self.place_destination(backend, root, DESTINATION, b"theirs")
        with pytest.raises(DestinationExists):
            backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        assert self.read_destination(backend, root, DESTINATION) == b"theirs"

    def test_commit_overwrites_when_allowed(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"mine"])
        self.place_destination(backend, root, DESTINATION, b"theirs")
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=True)
        assert self.read_destination(backend, root, DESTINATION) == b"mine"

    def test_commit_is_idempotent(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"once"])
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        assert self.read_destination(backend, root, DESTINATION) == b"once"

    def test_commit_without_data_is_file_not_found(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.discard_data(SESSION_A)
        with pytest.raises(FileNotFoundError):
            backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        assert self.read_destination(backend, root, DESTINATION) is None

    def test_committed_file_outlives_the_session(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"keep"])
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        backend.delete(SESSION_A)
        assert self.read_destination(backend, root, DESTINATION) == b"keep"

    # -- removal ------------------------------------------------------------------------------

    def test_discard_data_keeps_the_record(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"abc"])
        backend.discard_data(SESSION_A)
        assert backend.data_size(SESSION_A) is None
        assert backend.load(SESSION_A) is not None
        backend.discard_data(SESSION_A)  # twice is fine

    def test_delete_removes_everything(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"abc"])
        backend.delete(SESSION_A)
        assert backend.load(SESSION_A) is None
        assert backend.data_size(SESSION_A) is None
        assert SESSION_A not in list(backend.session_ids())
        assert backend.active_sessions("alice") == []
        backend.delete(SESSION_A)  # twice is fine

    # -- enumeration --------------------------------------------------------------------------

    def test_active_sessions_per_owner(self, backend: Backend) -> None:
        backend.create(new_record(SESSION_A, "alice"))
        backend.create(new_record(SESSION_B, "bob"))
        assert backend.active_sessions("alice") == [SESSION_A]
        assert backend.active_sessions("bob") == [SESSION_B]
        assert backend.active_sessions("carol") == []

    def test_active_count_covers_every_owner(self, backend: Backend) -> None:
        assert backend.active_count() == 0
        backend.create(new_record(SESSION_A, "alice"))
        backend.create(new_record(SESSION_B, "bob"))
        assert backend.active_count() == 2
        backend.save(new_record(SESSION_A).tombstone(Trigger.CANCEL, 2_000.0))
        assert backend.active_count() == 1
        backend.delete(SESSION_B)
        assert backend.active_count() == 0

    def test_tombstones_are_not_active_but_are_listed(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.save(new_record().tombstone(Trigger.CLOSE, 2_000.0), durable=True)
        assert backend.active_sessions("alice") == []
        assert list(backend.session_ids()) == [SESSION_A]
        loaded = backend.load(SESSION_A)
        assert loaded is not None and loaded.state is SessionState.CLOSED

    def test_tombstones_are_counted_and_listed_oldest_first(self, backend: Backend) -> None:
        assert backend.tombstone_count() == 0
        backend.create(new_record(SESSION_A, "alice"))
        backend.create(new_record(SESSION_B, "bob"))
        backend.save(new_record(SESSION_B, "bob").tombstone(Trigger.CLOSE, 3_000.0))
        backend.save(new_record(SESSION_A).tombstone(Trigger.CANCEL, 2_000.0))
        assert backend.tombstone_count() == 2
        assert backend.oldest_tombstones(5) == [SESSION_A, SESSION_B]
        assert backend.oldest_tombstones(1) == [SESSION_A]
        backend.delete(SESSION_A)
        assert backend.tombstone_count() == 1
        assert backend.oldest_tombstones(5) == [SESSION_B]

    def test_local_files_keep_and_discard_a_reply(self, backend: Backend, tmp_path: Path) -> None:
        files = local_files(backend)
        if files is None:
            # No files on this host: upload-reply mode, which names files, refuses the backend.
            from .config import UploadDirectory
            from .server import UploadServer

            directory = UploadDirectory(
                upload_dir=tmp_path / "replies",
                notification_type="by-value",
                notification_url="http://127.0.0.1:9/notify",
            )
            with pytest.raises(ValueError, match="upload-reply mode"):
                UploadServer(directory, backend, sweep_interval=None)
            return
        backend.create(new_record())
        files.keep_reply(SESSION_A)
        assert files.reply_path(SESSION_A).read_bytes() == b""  # no reply is an empty reply
        files.reply_path(SESSION_A).write_bytes(b"the reply")
        files.keep_reply(SESSION_A)
        assert files.reply_path(SESSION_A).read_bytes() == b"the reply"
        files.discard_reply(SESSION_A)
        assert not files.reply_path(SESSION_A).exists()
        files.discard_reply(SESSION_A)  # twice is fine

    # -- locks --------------------------------------------------------------------------------

    def test_lock_excludes_another_thread(self, backend: Backend) -> None:
        # Sessions that exist: a lock on an unknown one may exclude nothing (it holds nothing).
        backend.create(new_record(SESSION_A))
        backend.create(new_record(SESSION_B, owner="bob"))
        held, release = threading.Event(), threading.Event()

        def holder() -> None:
            with backend.lock(SESSION_A, 1.0):
                held.set()
                release.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert held.wait(10)
            with pytest.raises(LockTimeout), backend.lock(SESSION_A, 0.05):
                pass
            with backend.lock(SESSION_B, 0.05):
                pass  # other sessions are not blocked
        finally:
            release.set()
            thread.join()
        with backend.lock(SESSION_A, 0.05):
            pass

    def test_lock_is_released_on_error(self, backend: Backend) -> None:
        with pytest.raises(RuntimeError), backend.lock(SESSION_A, 1.0):
            raise RuntimeError("boom")
        with backend.lock(SESSION_A, 0.05):
            pass
