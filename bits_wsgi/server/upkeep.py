"""Keeping the state area bounded and fresh: expiry, sweeps, the sweeper thread, the global
session cap and the tombstone budget (PROTOCOL.md §6.3, §6.4; D16, D23).

:class:`Upkeep` decides nothing about packets. The server asks it whether a Create fits under
the cap, tells it when a session ends, and has it expire an idle session it resolved; sweeps
(timed, at the cap, or ``bits-wsgi cleanup``) walk every session under its lock without waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..backends.base import Backend
from ..config import UploadDirectory
from ..errors import CorruptRecord, LockTimeout
from ..protocol import SessionId
from ..session import MAX_ACTIVITY_RESOLUTION, SessionRecord, activity_resolution, is_expired
from .session_cap import SessionCap
from .sweeper import Sweeper
from .tombstone_budget import TombstoneBudget

log = logging.getLogger("bits_wsgi")

#: IIS sweeps expired sessions every 12 hours by default (BITSCleanupUseDefault).
SWEEP_INTERVAL = 12 * 3600.0
#: The first sweep comes soon after start, for sessions that expired while the server was down.
FIRST_SWEEP_DELAY = 60.0


class Upkeep:
    def __init__(
        self,
        directory: UploadDirectory,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float | None = SWEEP_INTERVAL,
        expired: Callable[[SessionRecord], None] = lambda record: None,
    ) -> None:
        """``expired`` hears of every active session that expired (not of old tombstones)."""
        self.directory = directory
        self.backend = backend
        self._clock = clock
        self._expired = expired
        # Activity is stored at this resolution, so that most fragments write no record at all
        # (the offset is the data's length); expiry allows for it.
        self.activity_resolution = activity_resolution(directory.session_timeout)
        #: held by every sweep of this directory in this process, and across a fork
        self.sweep_guard = threading.Lock()
        self.session_cap: SessionCap | None = None
        self.tombstone_budget: TombstoneBudget | None = None
        if directory.max_sessions:
            self.session_cap = SessionCap(
                directory.max_sessions, backend.active_count, self._sweep_for_cap
            )
            self.tombstone_budget = TombstoneBudget(
                directory.max_sessions, backend.tombstone_count, self._remove_tombstones
            )
        self.sweeper: Sweeper | None = None
        if sweep_interval is not None:
            self.sweeper = Sweeper(
                self._timed_sweep,
                sweep_interval,
                min(FIRST_SWEEP_DELAY, sweep_interval),
                self.sweep_guard,
            )
            self.sweeper.ensure_running()

    # -- what the server asks and tells ---------------------------------------------------------

    def ensure_running(self) -> None:
        if self.sweeper is not None:
            self.sweeper.ensure_running()  # in a worker forked after start-up

    def cap_reached(self) -> bool:
        """Whether a new session would pass ``max_sessions`` (if not, it is counted)."""
        return self.session_cap is not None and self.session_cap.reached()

    def ended(self, record: SessionRecord) -> None:
        """An active session became a tombstone: its place under the cap is free, and the
        tombstone counts against the budget."""
        if self.session_cap is not None:
            self.session_cap.released()
        if self.tombstone_budget is not None:
            self.tombstone_budget.noted()

    def expire_if_stale(self, record: SessionRecord, timeout: float | None = None) -> bool:
        """D16: delete an idle session (no tombstone) or an old tombstone. Caller holds the lock.

        A sweep with its own threshold (cleanup --older-than) may run beside servers of any
        configuration: it allows for the coarsest resolution any of them stores activity at.
        """
        if timeout is None:
            limit, resolution = self.directory.session_timeout, self.activity_resolution
        else:
            limit, resolution = timeout, MAX_ACTIVITY_RESOLUTION
        if not is_expired(record, self._clock(), limit, resolution):
            return False
        self.backend.delete(record.id)
        log.info("session %s: expired (%s)", SessionId(record.id).wire, record.state.value)
        if not record.state.is_tombstone:
            if self.session_cap is not None:
                self.session_cap.released()
            self._expired(record)
        return True

    # -- sweeps (§6.4) -------------------------------------------------------------------------

    def sweep(self, older_than: float | None = None) -> int:
        """Delete expired sessions and old tombstones, then keep the tombstone budget; return
        how many went.

        Each session is taken under its lock without waiting: a busy session is in use, and so
        not expired, whatever its last recorded activity says.
        """
        removed = 0
        for session_id in list(self.backend.session_ids()):
            try:
                with self.backend.lock(session_id, 0):
                    try:
                        record = self.backend.load(session_id)
                    except CorruptRecord:
                        log.error("sweep: session %s has an unreadable record", session_id)
                        continue
                    if record is None:
                        continue
                    if self.expire_if_stale(record, older_than):
                        removed += 1
            except LockTimeout:
                continue
        if self.tombstone_budget is not None:
            removed += self.tombstone_budget.enforce()
        return removed

    def _sweep_for_cap(self) -> None:
        """At the global cap, expired sessions make room first (one thread at a time)."""
        if self.sweep_guard.acquire(blocking=False):
            try:
                self.sweep()
            finally:
                self.sweep_guard.release()

    def _timed_sweep(self) -> int:
        """The sweeper's sweep: skipped while another thread of this process sweeps."""
        if not self.sweep_guard.acquire(blocking=False):
            return 0
        try:
            return self.sweep()
        finally:
            self.sweep_guard.release()

    def _remove_tombstones(self, excess: int) -> int:
        """The oldest ``excess`` tombstones go (the budget, §6.3); a busy one is skipped."""
        removed = 0
        for session_id in self.backend.oldest_tombstones(excess):
            try:
                with self.backend.lock(session_id, 0):
                    try:
                        record = self.backend.load(session_id)
                    except CorruptRecord:
                        continue  # kept for an operator, as sweeps do
                    if record is not None and record.state.is_tombstone:
                        self.backend.delete(session_id)
                        removed += 1
            except LockTimeout:
                continue
        if removed:
            log.info("tombstone budget: removed the %d oldest tombstones", removed)
        return removed

    def close(self) -> None:
        """Stop the timed sweeps (tests, and applications that rebuild their middleware)."""
        if self.sweeper is not None:
            self.sweeper.stop()
