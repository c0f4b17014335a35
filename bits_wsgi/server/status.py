"""What an operator's status page shows, read from the backend: every host's sessions.

A snapshot lists the sessions in progress (identity, destination, bytes, rate, last activity,
state), the sessions that ended most recently, totals per identity, and the upload directory's
health (free disk, whether the backend answers). It reads records without locks (they are
replaced whole), and at most ``limit`` of them, so a page costs the same with 10 or 100,000
sessions; ``truncated`` says when there were more.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..backends import Backend
from ..config import UploadDirectory
from ..errors import CorruptRecord
from ..protocol import SessionId
from ..session import SessionRecord

#: Records read for one snapshot, at most.
DEFAULT_LIMIT = 2000
#: Ended sessions shown, most recent first.
RECENT = 20


@dataclass(frozen=True)
class SessionView:
    session: str
    identity: str
    destination: str
    state: str
    received: int
    total: int | None
    created: float
    last_activity: float
    committed: bool

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return min(100.0, 100.0 * self.received / self.total)

    @property
    def rate(self) -> float:
        """Bytes per second over the session's life so far."""
        return self.received / max(self.last_activity - self.created, 1.0)

    def as_json(self, now: float) -> dict[str, object]:
        return {
            "session": self.session,
            "identity": self.identity,
            "destination": self.destination,
            "state": self.state,
            "received": self.received,
            "total": self.total,
            "percent": None if self.percent is None else round(self.percent, 1),
            "rate": round(self.rate),
            "idle_seconds": round(max(0.0, now - self.last_activity), 1),
            "committed": self.committed,
        }


@dataclass(frozen=True)
class Totals:
    sessions: int = 0
    received: int = 0


@dataclass(frozen=True)
class Snapshot:
    prefix: str
    taken: float
    in_progress: list[SessionView]
    recent: list[SessionView]
    totals: dict[str, Totals]
    disk_free: int | None
    disk_total: int | None
    backend_error: str | None
    truncated: bool
    unreadable: int = 0
    #: ``min_free_disk``: below it new sessions wait (None: no floor)
    disk_floor: int | None = None
    #: ``quota_bytes_per_day`` (None: no quota), and the biggest users of today
    quota: int | None = None
    stored_today: dict[str, int] = field(default_factory=dict)

    @property
    def below_floor(self) -> bool:
        return (
            self.disk_floor is not None
            and self.disk_free is not None
            and self.disk_free < self.disk_floor
        )

    def as_json(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "taken": self.taken,
            "in_progress": [view.as_json(self.taken) for view in self.in_progress],
            "recent": [view.as_json(self.taken) for view in self.recent],
            "totals": {
                identity: {"sessions": totals.sessions, "received": totals.received}
                for identity, totals in sorted(self.totals.items())
            },
            "health": {
                "disk_free": self.disk_free,
                "disk_total": self.disk_total,
                "disk_floor": self.disk_floor,
                "below_disk_floor": self.below_floor,
                "backend": "ok" if self.backend_error is None else self.backend_error,
            },
            "quota": {
                "bytes_per_day": self.quota,
                "stored_today": self.stored_today,
                "reached": sorted(
                    identity
                    for identity, stored in self.stored_today.items()
                    if self.quota is not None and stored >= self.quota
                ),
            },
            "truncated": self.truncated,
            "unreadable": self.unreadable,
        }


def snapshot(
    backend: Backend,
    directory: UploadDirectory,
    *,
    limit: int = DEFAULT_LIMIT,
    clock: Callable[[], float] = time.time,
) -> Snapshot:
    views: list[SessionView] = []
    backend_error = None
    truncated = False
    unreadable = 0
    try:
        for number, key in enumerate(backend.session_ids()):
            if number >= limit:
                truncated = True
                break
            try:
                record = backend.load(key)
            except CorruptRecord:
                unreadable += 1
                continue
            if record is not None:
                views.append(_view(record))
    except OSError as exc:  # BackendUnavailable included
        backend_error = f"unavailable: {exc}"
    ended = [view for view in views if view.state in ("closed", "cancelled")]
    active = [view for view in views if view.state not in ("closed", "cancelled")]
    active.sort(key=lambda view: view.last_activity, reverse=True)
    ended.sort(key=lambda view: view.last_activity, reverse=True)
    totals: dict[str, Totals] = {}
    for view in active:
        before = totals.get(view.identity, Totals())
        totals[view.identity] = Totals(before.sessions + 1, before.received + view.received)
    disk_free: int | None = None
    disk_total: int | None = None
    try:
        usage = shutil.disk_usage(directory.upload_dir)
        disk_free, disk_total = usage.free, usage.total
    except OSError:
        pass  # the root is not made yet: unknown, not an error
    stored_today: dict[str, int] = {}
    if directory.quota_bytes_per_day is not None and backend.usage is not None:
        try:
            stored_today = backend.usage.day_totals(int(clock() // 86_400), RECENT)
        except OSError as exc:
            backend_error = f"unavailable: {exc}"
    return Snapshot(
        prefix=directory.prefix,
        taken=clock(),
        in_progress=active,
        recent=ended[:RECENT],
        totals=totals,
        disk_free=disk_free,
        disk_total=disk_total,
        backend_error=backend_error,
        truncated=truncated,
        unreadable=unreadable,
        disk_floor=directory.min_free_disk,
        quota=directory.quota_bytes_per_day,
        stored_today=stored_today,
    )


def _view(record: SessionRecord) -> SessionView:
    return SessionView(
        session=SessionId(record.id).wire,
        identity=record.owner,
        destination=record.destination,
        state=record.state.value,
        received=record.received,
        total=record.total,
        created=record.created,
        last_activity=record.last_activity,
        committed=record.committed,
    )
