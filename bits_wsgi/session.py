"""Session values and the pure decisions over them: states, the offset table, expiry.

Nothing here does I/O. :class:`SessionRecord` is what a backend stores; :func:`plan_fragment` is
the offset algorithm of PROTOCOL.md §4.2–§4.3 (D2); :func:`is_expired` is D16's idle rule.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from typing import Any

from .errors import CorruptRecord, InvalidRequest, RangeGap, UploadTooLarge
from .protocol import FragmentRange

#: Tombstones outlive their session by at least a day, so a late Close or Cancel still gets 200.
MIN_TOMBSTONE_RETENTION = 86_400
#: The coarsest resolution any server stores activity at (see activity_resolution).
MAX_ACTIVITY_RESOLUTION = 60.0


class SessionState(enum.Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    WAIT_FOR_CLOSE = "wait-for-close"
    CLOSED = "closed"
    CANCELLED = "cancelled"

    @property
    def is_tombstone(self) -> bool:
        return self in (SessionState.CLOSED, SessionState.CANCELLED)


class Trigger(enum.Enum):
    """What moves a session from one state to another (PROTOCOL.md §6.2)."""

    #: N reached T: final processing starts, or resumes after it failed (§4.5)
    ALL_BYTES = "all bytes held"
    #: final processing succeeded: notified if due, committed if due, the final Ack stored
    FINISHED = "final processing done"
    CLOSE = "close"
    CANCEL = "cancel"


_ACTIVE = (SessionState.RECEIVING, SessionState.COMPLETE, SessionState.WAIT_FOR_CLOSE)

#: Every state change a session can make, one row each (§6.2); anything else is a bug. Expiry is
#: no change of state: the session is deleted whatever its state.
TRANSITIONS: dict[tuple[SessionState, Trigger], SessionState] = {
    (SessionState.RECEIVING, Trigger.ALL_BYTES): SessionState.COMPLETE,
    (SessionState.COMPLETE, Trigger.ALL_BYTES): SessionState.COMPLETE,
    (SessionState.COMPLETE, Trigger.FINISHED): SessionState.WAIT_FOR_CLOSE,
    **{(state, Trigger.CLOSE): SessionState.CLOSED for state in _ACTIVE},
    **{(state, Trigger.CANCEL): SessionState.CANCELLED for state in _ACTIVE},
}


def next_state(state: SessionState, trigger: Trigger) -> SessionState:
    """The row of :data:`TRANSITIONS` for ``state`` and ``trigger``; no row is a ``ValueError``."""
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise ValueError(f"no transition from {state.value} on {trigger.value}") from None


@dataclass(slots=True, kw_only=True)
class SessionRecord:
    """The durable state of one session (or, once closed or cancelled, its tombstone)."""

    id: str
    owner: str
    destination: str
    #: The Create-Session's URL, which an upload-reply notification forwards (§7.2); other
    #: directories keep "" (building it costs every Create and nothing reads it).
    url: str
    state: SessionState
    created: float
    last_activity: float
    received: int = 0
    total: int | None = None
    committed: bool = False
    # The NotifyCache (§6.3): the application's successful answer, kept once it succeeded.
    notified: bool = False
    copy_to_destination: bool = False
    reply_url: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.total is not None and self.received == self.total

    def to_json(self) -> dict[str, Any]:
        # Written by hand: dataclasses.asdict deep-copies, and this runs on every record write.
        return {
            "id": self.id,
            "owner": self.owner,
            "destination": self.destination,
            "url": self.url,
            "state": self.state.value,
            "created": self.created,
            "last_activity": self.last_activity,
            "received": self.received,
            "total": self.total,
            "committed": self.committed,
            "notified": self.notified,
            "copy_to_destination": self.copy_to_destination,
            "reply_url": self.reply_url,
        }

    @classmethod
    def from_json(cls, data: Any) -> SessionRecord:
        """Rebuild a record; anything unexpected is :class:`CorruptRecord`, never a crash."""
        try:
            record = cls(
                id=_typed(data["id"], str),
                owner=_typed(data["owner"], str),
                destination=_typed(data["destination"], str),
                url=_typed(data["url"], str),
                state=SessionState(data["state"]),
                created=float(_typed(data["created"], (int, float))),
                last_activity=float(_typed(data["last_activity"], (int, float))),
                received=_typed(data["received"], int),
                total=None if data["total"] is None else _typed(data["total"], int),
                committed=_typed(data["committed"], bool),
                notified=_typed(data.get("notified", False), bool),
                copy_to_destination=_typed(data.get("copy_to_destination", False), bool),
                reply_url=_optional_str(data.get("reply_url")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptRecord(f"malformed session record: {exc}") from exc
        if record.received < 0 or (record.total is not None and record.received > record.total):
            raise CorruptRecord(f"session {record.id}: offset {record.received} out of range")
        return record

    def touched(self, now: float) -> SessionRecord:
        return replace(self, last_activity=now)

    def advance(self, trigger: Trigger) -> None:
        """Move to the state :data:`TRANSITIONS` gives for ``trigger``."""
        self.state = next_state(self.state, trigger)

    def tombstone(self, trigger: Trigger, now: float) -> SessionRecord:
        """The tombstone Close or Cancel leaves (a copy: the caller keeps the live record)."""
        return replace(self, state=next_state(self.state, trigger), last_activity=now)


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    # bool is an int in Python; a JSON true where a number belongs is corruption.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"expected {kind}, got {type(value).__name__}")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else _typed(value, str)


def activity_resolution(session_timeout: float) -> float:
    """How stale a stored activity time may be: the server rewrites it at most this often, so
    that most fragments write no record (expiry is measured in days; a minute is nothing)."""
    return min(MAX_ACTIVITY_RESOLUTION, session_timeout / 100)


def is_expired(
    record: SessionRecord, now: float, session_timeout: float, resolution: float = 0.0
) -> bool:
    """Idle longer than the timeout; a clock that went backwards counts as no idle time.

    An active session's stored activity can lag its last bytes by up to ``resolution``
    seconds, so only idle time beyond that counts (§6.4, D23): no threshold, however small,
    expires a session that received bytes less than ``session_timeout`` seconds ago.
    """
    idle = max(0.0, now - record.last_activity)
    if record.state.is_tombstone:
        return idle > max(MIN_TOMBSTONE_RETENTION, session_timeout)
    return idle - resolution > session_timeout


class FragmentAction(enum.Enum):
    WRITE = "write"
    DUPLICATE = "duplicate"
    FINAL_REPEAT = "final-repeat"


@dataclass(frozen=True, slots=True)
class FragmentPlan:
    """What to do with a fragment's body: discard ``skip`` bytes, then store ``write`` bytes."""

    action: FragmentAction
    skip: int = 0
    write: int = 0
    received: int = 0


def plan_fragment(
    received: int, recorded_total: int | None, fragment: FragmentRange, max_upload_size: int | None
) -> FragmentPlan:
    """Checks e–h of PROTOCOL.md §4.2 and the offset table of §4.3.

    Raises :class:`InvalidRequest` for a changed total, :class:`UploadTooLarge` for a total over
    the limit, and :class:`RangeGap` (carrying N) for a fragment that starts past N.
    """
    first, last, total = fragment.first, fragment.last, fragment.total
    if recorded_total is not None and total != recorded_total:  # e
        raise InvalidRequest(f"total changed from {recorded_total} to {total}", received=received)
    if recorded_total is None and max_upload_size is not None and total > max_upload_size:  # f
        raise UploadTooLarge(f"total {total} exceeds {max_upload_size}", received=received)
    # g: N = T already. The data can hold all T bytes before any total is recorded (a worker
    # died between writing the last bytes and recording them): that is completion too, never a
    # duplicate, or a Close would discard a finished upload.
    if received == (recorded_total if recorded_total is not None else total):
        return FragmentPlan(FragmentAction.FINAL_REPEAT, received=received)
    if first > received:  # h: gap
        raise RangeGap(f"fragment starts at {first}, expected {received}", received=received)
    if last < received and fragment.length > 0:
        return FragmentPlan(FragmentAction.DUPLICATE, received=received)
    skip = received - first
    return FragmentPlan(
        FragmentAction.WRITE, skip=skip, write=last + 1 - received, received=last + 1
    )


def decode_record(session_id: str, raw: bytes | str) -> SessionRecord:
    """A stored record, checked: anything unreadable is ``CorruptRecord``, never a crash."""
    try:
        record = SessionRecord.from_json(json.loads(raw))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptRecord(f"session {session_id}: {exc}") from exc
    if record.id != session_id:
        raise CorruptRecord(f"session {session_id}: record names {record.id}")
    return record


def encode_record(record: SessionRecord) -> bytes:
    """The stored form that ``decode_record`` reads back."""
    return json.dumps(record.to_json(), separators=(",", ":")).encode("utf-8")


def holds_its_offset(record: SessionRecord) -> bool:
    """Whether the data's length is the session's offset (PROTOCOL.md §10.2): for an active,
    uncommitted session it is, so the offset can never run ahead of the bytes held and a
    fragment's progress needs no record write. ``ComposedBackend.load`` applies it."""
    return not record.state.is_tombstone and not record.committed
