"""The contract of a whole backend: the parts as the server uses them, end to end."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ..backends.base import Backend
from ..paths import Destination
from ..session import SessionState, Trigger
from .values import (
    DESTINATION,
    SESSION_A,
    SESSION_B,
    Destinations,
    Failing,
    check_exclusion,
    check_release_on_error,
    new_record,
)


class BackendContract(Destinations):
    """``make_backend`` builds a fresh backend below ``root``. The parts' own suites
    (``RecordStoreContract``, ``BlobStoreContract``, ``LockerContract``) check each part; this
    one checks what the server relies on across them."""

    def make_backend(self, root: Path) -> Backend:
        raise NotImplementedError

    @pytest.fixture
    def backend(self, root: Path) -> Backend:
        return self.make_backend(root)

    # -- records and the offset rule ----------------------------------------------------------

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

    def test_the_offset_is_the_length_of_the_data(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"1234567"])  # no save: the data alone moves the offset
        loaded = backend.load(SESSION_A)
        assert loaded is not None and loaded.received == 7

    def test_a_failed_write_is_cut_back_at_once(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"abc"])
        with pytest.raises(OSError):
            backend.write(SESSION_A, 3, Failing(b"partial"))
        assert backend.data_size(SESSION_A) == 3
        loaded = backend.load(SESSION_A)
        assert loaded is not None and loaded.received == 3

    def test_sync_keeps_the_data(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"x" * 1000])
        backend.sync(SESSION_A)
        assert backend.data_size(SESSION_A) == 1000

    # -- commit -------------------------------------------------------------------------------

    def test_commit_publishes_the_exact_bytes(self, backend: Backend, root: Path) -> None:
        payload = os.urandom(300_000)
        backend.create(new_record())
        backend.write(SESSION_A, 0, [payload[:100_000], payload[100_000:]])
        backend.sync(SESSION_A)
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        committed = self.read_destination(root, DESTINATION)
        assert committed is not None
        assert hashlib.sha256(committed).digest() == hashlib.sha256(payload).digest()

    def test_committed_file_outlives_the_session(self, backend: Backend, root: Path) -> None:
        backend.create(new_record())
        backend.write(SESSION_A, 0, [b"keep"])
        backend.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        backend.delete(SESSION_A)
        assert self.read_destination(root, DESTINATION) == b"keep"

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

    def test_tombstones_are_not_active_but_are_listed(self, backend: Backend) -> None:
        backend.create(new_record())
        backend.save(new_record().tombstone(Trigger.CLOSE, 2_000.0), durable=True)
        assert backend.active_sessions("alice") == []
        assert list(backend.session_ids()) == [SESSION_A]
        loaded = backend.load(SESSION_A)
        assert loaded is not None and loaded.state is SessionState.CLOSED

    def test_local_files_keep_and_discard_a_reply(self, backend: Backend, tmp_path: Path) -> None:
        files = backend.files
        if files is None:
            # No files on this host: upload-reply mode, which names files, refuses the backend.
            from ..config import UploadDirectory
            from ..server import UploadServer

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
        check_exclusion(backend.lock)

    def test_lock_is_released_on_error(self, backend: Backend) -> None:
        check_release_on_error(backend.lock)
