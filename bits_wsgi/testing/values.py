"""The sessions, records and bodies the contract suites share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from ..errors import LockTimeout
from ..session import SessionRecord, SessionState

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


class Failing:
    """A body that yields some bytes and then fails, like a client that disconnects."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise OSError("client went away")


class Destinations:
    """Where commits land. The suites commit to files below ``root``; a store that publishes
    elsewhere (a bucket) overrides ``read_destination`` and ``place_destination``."""

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        root = tmp_path / "root"
        root.mkdir()
        return root

    def read_destination(self, root: Path, key: str) -> bytes | None:
        """The bytes committed at ``key``, or None if nothing is there."""
        path = root.joinpath(*key.split("/"))
        return path.read_bytes() if path.exists() else None

    def place_destination(self, root: Path, key: str, data: bytes) -> None:
        """Put someone else's file at ``key``."""
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def check_exclusion(lock: Callable[[str, float], AbstractContextManager[None]]) -> None:
    """A lock held by one thread times out for another, blocks no other session, and is
    free again once released."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock(SESSION_A, 1.0):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        with pytest.raises(LockTimeout), lock(SESSION_A, 0.05):
            pass
        with lock(SESSION_B, 0.05):
            pass  # other sessions are not blocked
    finally:
        release.set()
        thread.join()
    with lock(SESSION_A, 0.05):
        pass


def check_release_on_error(lock: Callable[[str, float], AbstractContextManager[None]]) -> None:
    with pytest.raises(RuntimeError), lock(SESSION_A, 1.0):
        raise RuntimeError("boom")
    with lock(SESSION_A, 0.05):
        pass
