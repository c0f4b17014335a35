"""The contract of a locker: one holder per session, over threads (and processes, hosts)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ..backends.base import Locker
from .values import SESSION_A, SESSION_B, check_exclusion, check_release_on_error


class LockerContract:
    """``make_locker`` builds a fresh locker below ``root``; ``known`` says which sessions
    exist (a locker may keep nothing for the others)."""

    def make_locker(self, root: Path, known: Callable[[str], bool]) -> Locker:
        raise NotImplementedError

    @pytest.fixture
    def locker(self, tmp_path: Path) -> Locker:
        existing = {SESSION_A, SESSION_B}
        return self.make_locker(tmp_path, existing.__contains__)

    def test_lock_excludes_another_thread(self, locker: Locker) -> None:
        check_exclusion(locker.lock)

    def test_a_waiter_gets_the_lock_once_it_is_released(self, locker: Locker) -> None:
        held, release, got = threading.Event(), threading.Event(), threading.Event()

        def holder() -> None:
            with locker.lock(SESSION_A, 1.0):
                held.set()
                release.wait(10)

        def waiter() -> None:
            with locker.lock(SESSION_A, 10.0):
                got.set()

        first = threading.Thread(target=holder)
        first.start()
        assert held.wait(10)
        second = threading.Thread(target=waiter)
        second.start()
        release.set()
        first.join()
        second.join()
        assert got.is_set()

    def test_lock_is_released_on_error(self, locker: Locker) -> None:
        check_release_on_error(locker.lock)

    def test_a_forgotten_session_can_be_locked_again(self, locker: Locker) -> None:
        with locker.lock(SESSION_A, 1.0):
            pass
        locker.forget(SESSION_A)
        locker.forget(SESSION_A)  # twice is fine
        with locker.lock(SESSION_A, 0.05):
            pass

    def test_a_fence_holds_while_the_lock_is_held(self, locker: Locker) -> None:
        assert locker.fence(SESSION_A) is None  # no lock, no lease
        with locker.lock(SESSION_A, 1.0):
            fence = locker.fence(SESSION_A)
            if fence is None:
                return  # a lock no live holder can lose needs no fence
            assert not fence.stale_writer
            fence.check()
            with fence.writing() as before_the_bytes_change:
                before_the_bytes_change()
            fence.check()
        assert locker.fence(SESSION_A) is None

    def test_a_fence_belongs_to_the_thread_that_holds_the_lock(self, locker: Locker) -> None:
        seen: list[object] = []
        with locker.lock(SESSION_A, 1.0):
            thread = threading.Thread(target=lambda: seen.append(locker.fence(SESSION_A)))
            thread.start()
            thread.join()
        assert seen == [None]
