"""A background thread that every process runs once: threads do not survive a fork, so a
worker forked after start-up (gunicorn's ``preload_app``, ``bits-wsgi serve``) starts its own
at its first request, and the parent keeps its own."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class PerProcess:
    def __init__(self) -> None:
        self._pid: int | None = None
        self._starting = threading.Lock()

    def ensure(self, start: Callable[[], None]) -> None:
        """Call ``start`` unless this process did already (a cheap check on every request)."""
        if self._pid == os.getpid():
            return
        with self._starting:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            start()
