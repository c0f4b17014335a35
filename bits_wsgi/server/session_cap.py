"""The global session cap (``max_sessions``) without counting every session on every Create.

Counting all open sessions is a walk over the backend's index: about 120 ms for 10,000 sessions
of 10,000 identities in files. So each process keeps an estimate: a full count at least every
``refresh_interval`` seconds (to see other processes' and hosts' sessions), plus the sessions it
created since, minus those it closed. Only when the estimate reaches the cap is the count taken
again (at most every ``recount_interval`` seconds), after a sweep of expired sessions (at most
every ``sweep_interval`` seconds). Like the per-identity limit, the cap bounds what the server
holds; Creates racing on several processes may pass it by a few.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class SessionCap:
    refresh_interval = 10.0
    recount_interval = 1.0
    sweep_interval = 60.0

    def __init__(
        self,
        cap: int,
        count: Callable[[], int],
        sweep: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cap = cap
        self._count = count
        self._sweep = sweep
        self._clock = clock
        self._guard = threading.Lock()
        self._estimate = 0
        self._counted_at = float("-inf")
        self._swept_at = float("-inf")

    def reached(self) -> bool:
        """Whether a new session would pass the cap; if not, it is counted as created."""
        now = self._clock()
        with self._guard:
            if now - self._counted_at < self.refresh_interval:
                if self._estimate < self.cap:
                    self._estimate += 1
                    return False
                if now - self._counted_at < self.recount_interval:
                    return True
            self._counted_at = now  # this thread counts; the others use the estimate meanwhile
        count = self._count()
        if count >= self.cap and now - self._swept_at >= self.sweep_interval:
            self._swept_at = now
            self._sweep()
            count = self._count()
        with self._guard:
            full = count >= self.cap
            self._estimate = count if full else count + 1
            self._counted_at = self._clock()
        return full

    def released(self) -> None:
        """A session of this process was closed, cancelled or expired."""
        with self._guard:
            self._estimate = max(0, self._estimate - 1)
