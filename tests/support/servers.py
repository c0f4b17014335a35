"""Start a server program of the test suite's own on a free loopback port, stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from .ports import free_port


@contextmanager
def running(
    command: Callable[[int], Sequence[str]], name: str, timeout: float = 30
) -> Iterator[int]:
    """Run ``command(port)`` until its port answers; yield the port; terminate it by PID."""
    port = free_port()
    process = subprocess.Popen(
        list(command(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                process.wait(20)
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.05)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(20)
