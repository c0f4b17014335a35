"""Expiry sweeps on a timer inside the server, with no cron and whether or not traffic comes.

One daemon thread per upload directory and process: a WSGI server that forks its workers after
building the application (gunicorn ``preload_app``) leaves the thread in the parent, so the
thread is started again in any process that handles a request without one. Sweeps are safe to
run in several processes and hosts at once: each session is taken under its lock without
waiting (``UploadServer.sweep``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import weakref
from collections.abc import Callable

log = logging.getLogger("bits_wsgi")


class Sweeper:
    def __init__(self, sweep: Callable[[], int], interval: float, first_delay: float) -> None:
        # A weak reference: the thread must not keep a discarded server (and its backend) alive.
        self._sweep = weakref.WeakMethod(sweep)
        self.interval = interval
        self.first_delay = first_delay
        self._stopped = threading.Event()
        self._pid: int | None = None
        self._guard = threading.Lock()

    def ensure_running(self) -> None:
        """Start the thread in this process unless it runs here already (a cheap check)."""
        if self._pid == os.getpid():
            return
        with self._guard:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
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
