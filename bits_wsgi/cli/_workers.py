"""Worker processes that share one listening socket: the master starts them, starts a new one
when one dies, and on SIGTERM or SIGINT asks them all to stop gracefully, killing the ones still
running ``graceful_timeout`` (and 5 s more) later."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("bits_wsgi.serve")

#: A worker's body: it serves until its argument is no longer empty (a stop signal came).
Work = Callable[[list[int]], None]


def listen(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (non-blocking: each accepts in its event loop)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=2048)
    listener.setblocking(False)
    return listener


def run_workers(work: Work, count: int, graceful_timeout: float) -> None:
    _Master(work, count, graceful_timeout).run()


class _Master:
    def __init__(self, work: Work, count: int, graceful_timeout: float) -> None:
        self.work, self.count, self.graceful_timeout = work, count, graceful_timeout
        self.workers: set[int] = set()
        self.stopping: float | None = None

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        while True:
            if self.stopping is None:
                while len(self.workers) < self.count:
                    self._spawn()
            elif not self.workers:
                return
            elif time.monotonic() - self.stopping > self.graceful_timeout + 5:
                for pid in self.workers:
                    os.kill(pid, signal.SIGKILL)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid:
                self.workers.discard(pid)
                if self.stopping is None:
                    log.error("worker %d exited (%s); starting another", pid, status)
            else:
                time.sleep(0.1)

    def _stop(self, signum: int, frame: Any) -> None:
        if self.stopping is None:
            self.stopping = time.monotonic()
            for pid in self.workers:
                os.kill(pid, signal.SIGTERM)

    def _spawn(self) -> None:
        # A stop signal that arrives while the child is being made waits until the child has
        # its own handlers: it would otherwise run the master's handler in the child, and the
        # child would never stop.
        stops = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        pid = os.fork()
        if pid:
            self.workers.add(pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            return
        try:
            stop: list[int] = []
            signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
            signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            self.work(stop)
        except BaseException:
            log.exception("worker failed")
            os._exit(1)
        os._exit(0)
