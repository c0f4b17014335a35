"""The tombstone budget (PROTOCOL.md §6.3, D23): closed sessions cannot pile up without bound.

A tombstone only turns a repeated Close or Cancel into a 200, so past the budget the oldest go
first. Counting every tombstone on every Close would walk the backend's index, so each process
keeps an estimate: a full count at most every ``recount_interval`` seconds (to see other
processes' and hosts' tombstones), plus the tombstones it made since. When the estimate passes
the budget, the count is taken at once and the oldest are removed down to ``keep_fraction`` of
the budget, so that one walk pays for many Closes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TombstoneBudget:
    recount_interval = 1.0
    keep_fraction = 0.9

    def __init__(
        self,
        budget: int,
        count: Callable[[], int],
        trim: Callable[[int], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self._count = count
        self._trim = trim
        self._clock = clock
        self._guard = threading.Lock()
        self._estimate = 0
        self._counted_at = float("-inf")
        self._busy = False

    def noted(self) -> None:
        """A tombstone was stored: past the budget (or the recount interval), count and trim."""
        now = self._clock()
        with self._guard:
            self._estimate += 1
            due = self._estimate > self.budget or now - self._counted_at >= self.recount_interval
            if not due or self._busy:
                return
            self._busy = True  # one thread of this process counts and trims at a time
            self._counted_at = now
        self._enforce_once()

    def enforce(self) -> int:
        """Count and trim now (sweeps); return how many tombstones went."""
        with self._guard:
            if self._busy:
                return 0
            self._busy = True
            self._counted_at = self._clock()
        return self._enforce_once()

    def _enforce_once(self) -> int:
        removed = 0
        count = self._estimate
        try:
            count = self._count()
            if count > self.budget:
                keep = int(self.budget * self.keep_fraction)
                removed = self._trim(count - keep)
                count -= removed
        finally:
            with self._guard:
                self._estimate = count
                self._busy = False
        return removed
