"""Expiry sweeps on a timer inside the server, with no cron and whether or not traffic comes.

One daemon thread per upload directory and process: a WSGI server that forks its workers after
building the application (gunicorn ``preload_app``, and ``bits-wsgi serve``) keeps the thread in
the parent, which goes on sweeping, and a worker starts its own when it handles a request.
Sweeps are safe to run in several processes and hosts at once: each session is taken under its
lock without waiting (``Upkeep.sweep``).

A fork never happens in the middle of a sweep: a child would inherit the session lock the sweep
holds (an ``flock`` lives as long as any copy of its file descriptor) and keep that session busy
for as long as the child lives. Before a fork, every sweeper's guard is taken, which waits for
a sweep in progress to end.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import weakref
from collections.abc import Callable

from .per_process import PerProcess

log = logging.getLogger("bits_wsgi")


class Sweeper:
    def __init__(
        self,
        sweep: Callable[[], int],
        interval: float,
        first_delay: float,
        guard: threading.Lock,
    ) -> None:
        # A weak reference: the thread must not keep a discarded server (and its backend) alive.
        self._sweep = weakref.WeakMethod(sweep)
        self.interval = interval
        self.first_delay = first_delay
        #: held by every sweep of the server, and across a fork
        self.guard = guard
        self._stopped = threading.Event()
        self._thread = PerProcess()
        _LIVE.add(self)

    def ensure_running(self) -> None:
        """Start the thread in this process unless it runs here already (a cheap check)."""
        self._thread.ensure(self._start)

    def _start(self) -> None:
        threading.Thread(target=self._run, name="bits-wsgi-sweep", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        delay = self.first_delay
        while not self._stopped.wait(delay):
            sweep = self._sweep()
            if sweep is None:
                return  # the server is gone
            try:
                count = sweep()
                log.info("sweep removed %d expired sessions", count)
            except Exception:
                log.exception("sweep failed")
            del sweep
            # Jitter, so that the workers of a farm do not all sweep at the same moment.
            delay = self.interval * random.uniform(0.9, 1.1)


_LIVE: weakref.WeakSet[Sweeper] = weakref.WeakSet()
_HELD_ACROSS_FORK: list[Sweeper] = []


#: A fork from inside a sweep (a hook that forks) must not wait for itself forever.
FORK_WAIT = 30.0


def _before_fork() -> None:
    for sweeper in list(_LIVE):
        if sweeper.guard.acquire(timeout=FORK_WAIT):  # waits for a sweep in progress
            _HELD_ACROSS_FORK.append(sweeper)


def _after_fork() -> None:
    while _HELD_ACROSS_FORK:
        _HELD_ACROSS_FORK.pop().guard.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
