"""Waiting for a lock that another holder has: the one back-off every locker uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import LockTimeout

T = TypeVar("T")

#: The first pause and the longest: short enough that a lock freed is taken within 50 ms.
FIRST_DELAY, MAX_DELAY = 0.001, 0.05


def retry_until(deadline: float, attempt: Callable[[], T | None]) -> T:
    """``attempt`` again and again, pausing twice as long each time, until it returns a result;
    ``LockTimeout`` once the ``time.monotonic()`` deadline has passed."""
    delay = FIRST_DELAY
    while True:
        result = attempt()
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout("session is busy")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_DELAY)
