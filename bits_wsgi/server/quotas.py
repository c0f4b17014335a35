"""Quotas: bytes each authenticated identity may store per UTC day (``quota_bytes_per_day``).

Bytes are counted as fragments are accepted, before they are written (and given back if the
write fails), in the backend's usage ledger, atomically, so the hosts of a farm share one count.
What the client sees (docs/protocol.md, "Quotas"):

- an identity whose day is used up gets 503 + ``Retry-After`` (the seconds until the next UTC
  day) on Create-Session and on each Fragment: Windows retries transient errors until its
  no-progress timeout (14 days by default) and resumes where it stopped, so the upload finishes
  on a later day instead of failing;
- an upload whose declared total exceeds the whole quota could never finish: its first Fragment
  gets 500 BG_E_TOO_LARGE, as for ``max_upload_size``, which Windows reports instead of
  retrying for two weeks.

Anonymous clients are not counted: without authentication every machine is the same empty
identity, and a fleet would share one day's quota (as for ``session_limit``, D23).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..backends.base import UsageLedger
from ..errors import QuotaReached, UploadTooLarge

DAY = 86_400


class Quotas:
    def __init__(
        self, quota: int, usage: UsageLedger, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.quota = quota
        self.usage = usage
        self._clock = clock
        self._forgotten_before = 0

    def today(self) -> tuple[int, int]:
        """Today (days since the epoch, UTC) and the seconds until tomorrow."""
        now = self._clock()
        return int(now // DAY), max(1, int(DAY - now % DAY))

    def check_room(self, identity: str) -> None:
        """Create-Session: an identity with nothing left today waits."""
        if identity and self.usage.used(identity, self.today()[0]) >= self.quota:
            raise self._reached(identity)

    def take(self, identity: str, total: int, count: int) -> int:
        """A fragment's ``count`` new bytes of an upload of ``total``: counted, or refused."""
        if not identity or count == 0:
            return 0
        if total > self.quota:
            raise UploadTooLarge(f"an upload of {total} bytes exceeds the daily quota")
        day = self.today()[0]
        if day > self._forgotten_before:  # once a day per process: the ledger stays small
            self.usage.forget_before(day - 1)
            self._forgotten_before = day
        if not self.usage.take(identity, day, count, self.quota):
            raise self._reached(identity)
        return count

    def give_back(self, identity: str, count: int) -> None:
        if count:
            self.usage.give_back(identity, self.today()[0], count)

    def stored_today(self, limit: int = 100) -> dict[str, int]:
        """The biggest users of today, for the status page."""
        return self.usage.day_totals(self.today()[0], limit)

    def identities_at_quota(self, limit: int = 10_000) -> int:
        """How many identities have used up today (of the ``limit`` biggest), for metrics."""
        return sum(1 for used in self.stored_today(limit).values() if used >= self.quota)

    def _reached(self, identity: str) -> QuotaReached:
        return QuotaReached(
            f"{identity!r} stored its {self.quota} bytes for today",
            seconds_left=self.today()[1],
        )
