"""What ComposedBackend adds to its parts: the order of two-part steps, the offset rule, and
fencing for lockers whose lock is a lease (PROTOCOL.md §10.1, §10.2)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bits_wsgi.backends import ComposedBackend
from bits_wsgi.backends.memory import MemoryBlobs, MemoryRecords, ThreadLocker
from bits_wsgi.errors import BackendUnavailable, LeaseLost
from bits_wsgi.paths import Destination
from bits_wsgi.testing import SESSION_A, new_record


class RecordingBlobs(MemoryBlobs):
    def __init__(self, *, fail_create: bool = False) -> None:
        super().__init__()
        self.fail_create = fail_create
        self.calls: list[str] = []

    def create_data(self, session_id: str, destination_key: str) -> None:
        if self.fail_create:
            raise BackendUnavailable("the blob store is down")
        super().create_data(session_id, destination_key)

    def rotate(self, session_id: str) -> None:
        self.calls.append("rotate")


class FakeLease:
    """A lease the test can expire, and that says what the composition asked of it."""

    def __init__(self, *, stale_writer: bool = False) -> None:
        self.stale_writer = stale_writer
        self.lost = False
        self.calls: list[str] = []

    def check(self) -> None:
        self.calls.append("check")
        if self.lost:
            raise LeaseLost("lock lost")

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[], None]]:
        self.calls.append("mark")
        yield self.check
        self.calls.append("unmark")
        if self.lost:
            raise LeaseLost("lock lost while the bytes were written")

    def stale_writer_replaced(self) -> None:
        self.calls.append("replaced")
        self.stale_writer = False


class LeaseLocker(ThreadLocker):
    def __init__(self, lease: FakeLease) -> None:
        super().__init__(lambda session_id: True)
        self.lease = lease

    def fence(self, session_id: str) -> FakeLease | None:
        return self.lease


def test_a_session_whose_data_cannot_start_leaves_no_record() -> None:
    records = MemoryRecords()
    backend = ComposedBackend(
        records=records, blobs=RecordingBlobs(fail_create=True), locker=ThreadLocker(bool)
    )
    with pytest.raises(BackendUnavailable):
        backend.create(new_record())
    assert records.load(SESSION_A) is None
    assert backend.active_sessions("alice") == []


def test_the_offset_is_the_data_for_active_sessions_only() -> None:
    backend = ComposedBackend(
        records=MemoryRecords(), blobs=MemoryBlobs(), locker=ThreadLocker(bool)
    )
    backend.create(new_record())
    backend.write(SESSION_A, 0, [b"12345"])
    loaded = backend.load(SESSION_A)
    assert loaded is not None and loaded.received == 5
    committed = new_record()
    committed.received, committed.committed = 3, True  # committed: the record says, not the data
    backend.save(committed)
    loaded = backend.load(SESSION_A)
    assert loaded is not None and loaded.received == 3


def test_a_holder_taking_over_from_a_stale_writer_rotates_the_data_first() -> None:
    lease, blobs = FakeLease(stale_writer=True), RecordingBlobs()
    backend = ComposedBackend(records=MemoryRecords(), blobs=blobs, locker=LeaseLocker(lease))
    backend.create(new_record())
    with backend.lock(SESSION_A, 1.0):
        assert blobs.calls == ["rotate"]
        assert lease.calls == ["replaced"]
    with backend.lock(SESSION_A, 1.0):
        assert blobs.calls == ["rotate"]  # once: the mark is gone


def test_writes_are_fenced_and_bytes_written_after_the_lease_are_refused() -> None:
    lease, blobs = FakeLease(), RecordingBlobs()
    backend = ComposedBackend(records=MemoryRecords(), blobs=blobs, locker=LeaseLocker(lease))
    backend.create(new_record())
    assert backend.write(SESSION_A, 0, [b"abc"]) == 3
    assert lease.calls == ["mark", "check", "unmark"]
    lease.lost = True
    with pytest.raises(LeaseLost):
        backend.write(SESSION_A, 3, [b"def"])
    assert backend.data_size(SESSION_A) == 3  # the fence ran before the bytes changed


@pytest.mark.parametrize("step", ["commit", "discard_data", "delete"])
def test_steps_that_change_the_data_check_the_lease(step: str, tmp_path: Path) -> None:
    lease = FakeLease()
    backend = ComposedBackend(
        records=MemoryRecords(), blobs=MemoryBlobs(), locker=LeaseLocker(lease)
    )
    backend.create(new_record())
    lease.lost = True
    with pytest.raises(LeaseLost):
        if step == "commit":
            backend.commit(SESSION_A, Destination(tmp_path, "f.bin"), overwrite=False)
        else:
            getattr(backend, step)(SESSION_A)
    assert backend.load(SESSION_A) is not None
    assert backend.data_size(SESSION_A) == 0
