"""The offset table (D2), expiry (D16) and record decoding, as pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from bits_wsgi.errors import CorruptRecord, InvalidRequest, RangeGap, UploadTooLarge
from bits_wsgi.protocol import FragmentRange
from bits_wsgi.session import (
    MIN_TOMBSTONE_RETENTION,
    FragmentAction,
    SessionRecord,
    SessionState,
    is_expired,
    plan_fragment,
)

W, D, R = FragmentAction.WRITE, FragmentAction.DUPLICATE, FragmentAction.FINAL_REPEAT


@pytest.mark.parametrize(
    ("received", "recorded_total", "rng", "expected"),
    [
        # In order: F = N
        (0, None, (0, 99, 1000), (W, 0, 100, 100)),
        (100, 1000, (100, 199, 1000), (W, 0, 100, 200)),
        # PROTOCOL.md §3.3's example: bytes 128-212 taken in order give 213
        (128, 1000, (128, 212, 1000), (W, 0, 85, 213)),
        # Overlap: F < N <= L writes only the new tail
        (150, 1000, (100, 199, 1000), (W, 50, 50, 200)),
        (199, 1000, (100, 199, 1000), (W, 99, 1, 200)),
        # Duplicate: L < N
        (200, 1000, (100, 199, 1000), (D, 0, 0, 200)),
        (500, 1000, (0, 0, 1000), (D, 0, 0, 500)),
        # Final repeat: N = T already
        (1000, 1000, (900, 999, 1000), (R, 0, 0, 1000)),
        (1000, 1000, (0, 9, 1000), (R, 0, 0, 1000)),
        # D13: the empty upload is complete as soon as it is announced
        (0, None, (0, -1, 0), (R, 0, 0, 0)),
        # all T bytes held before a total was recorded (a crash): completion, not a duplicate
        (13, None, (0, 12, 13), (R, 0, 0, 13)),
        (13, None, (5, 12, 13), (R, 0, 0, 13)),
        (0, 0, (0, -1, 0), (R, 0, 0, 0)),
    ],
)
def test_offset_table(
    received: int,
    recorded_total: int | None,
    rng: tuple[int, int, int],
    expected: tuple[FragmentAction, int, int, int],
) -> None:
    plan = plan_fragment(received, recorded_total, FragmentRange(*rng), None)
    assert (plan.action, plan.skip, plan.write, plan.received) == expected


@pytest.mark.parametrize(
    ("received", "recorded_total", "rng"),
    [(0, None, (1, 9, 10)), (100, 1000, (101, 200, 1000)), (0, 1000, (999, 999, 1000))],
)
def test_gap_is_416_carrying_n(
    received: int, recorded_total: int | None, rng: tuple[int, int, int]
) -> None:
    with pytest.raises(RangeGap) as exc:
        plan_fragment(received, recorded_total, FragmentRange(*rng), None)
    assert exc.value.status == 416
    assert exc.value.code == 0
    assert exc.value.received == received


def test_changed_total_is_400() -> None:
    with pytest.raises(InvalidRequest) as exc:
        plan_fragment(100, 1000, FragmentRange(100, 199, 2000), None)
    assert exc.value.received == 100


def test_total_over_the_limit_is_refused_before_anything_is_recorded() -> None:
    with pytest.raises(UploadTooLarge) as exc:
        plan_fragment(0, None, FragmentRange(0, 9, 1001), 1000)
    assert (exc.value.status, exc.value.code) == (500, 0x80200020)
    # once a total is recorded, the limit was already checked
    assert plan_fragment(0, 1000, FragmentRange(0, 9, 1000), 1000).action is W


def record(**changes: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "id": "A0FF5911-4144-45B3-BF27-27AFC8EC8A67",
        "owner": "",
        "destination": "f.bin",
        "url": "http://h/f.bin",
        "state": SessionState.RECEIVING,
        "created": 1000.0,
        "last_activity": 1000.0,
    }
    values.update(changes)
    return SessionRecord(**values)


def test_expiry_is_strictly_after_the_timeout() -> None:
    assert not is_expired(record(), 1000.0 + 60, 60)
    assert is_expired(record(), 1000.0 + 60.5, 60)


def test_clock_going_backwards_counts_as_no_idle_time() -> None:
    assert not is_expired(record(), 0.0, 60)


def test_tombstones_are_kept_at_least_a_day() -> None:
    tomb = record(state=SessionState.CLOSED)
    assert not is_expired(tomb, 1000.0 + 3600, 60)
    assert is_expired(tomb, 1000.0 + MIN_TOMBSTONE_RETENTION + 1, 60)
    assert not is_expired(tomb, 1000.0 + MIN_TOMBSTONE_RETENTION + 1, 2 * MIN_TOMBSTONE_RETENTION)


def test_record_round_trips_through_json() -> None:
    original = record(received=5, total=10, committed=True, state=SessionState.WAIT_FOR_CLOSE)
    assert SessionRecord.from_json(original.to_json()) == original


@pytest.mark.parametrize(
    "damage",
    [
        {"state": "exploded"},
        {"received": "5"},
        {"received": True},
        {"received": -1},
        {"received": 11, "total": 10},
        {"total": 1.5},
        {"owner": None},
        {"created": "yesterday"},
    ],
)
def test_malformed_records_are_corrupt_not_crashes(damage: dict[str, Any]) -> None:
    data = record(total=10).to_json()
    data.update(damage)
    with pytest.raises(CorruptRecord):
        SessionRecord.from_json(data)


@pytest.mark.parametrize("data", [None, [], "x", {}, {"id": "x"}])
def test_non_records_are_corrupt(data: Any) -> None:
    with pytest.raises(CorruptRecord):
        SessionRecord.from_json(data)


def test_to_json_names_every_field() -> None:
    from dataclasses import fields

    assert set(record().to_json()) == {f.name for f in fields(SessionRecord)}


# -- the transition table (§6.2): every state change is one row ----------------------------------

ROWS_OF_6_2 = [
    # (from, trigger, to)
    ("receiving", "ALL_BYTES", "complete"),
    ("complete", "ALL_BYTES", "complete"),  # a repeated final fragment resumes §4.5
    ("complete", "FINISHED", "wait-for-close"),
    ("receiving", "CLOSE", "closed"),
    ("complete", "CLOSE", "closed"),
    ("wait-for-close", "CLOSE", "closed"),
    ("receiving", "CANCEL", "cancelled"),
    ("complete", "CANCEL", "cancelled"),
    ("wait-for-close", "CANCEL", "cancelled"),
]


def test_the_transition_table_is_section_6_2() -> None:
    from bits_wsgi.session import TRANSITIONS, Trigger

    table = {
        (state.value, trigger.name, target.value)
        for (state, trigger), target in TRANSITIONS.items()
    }
    assert table == set(ROWS_OF_6_2)
    assert len(TRANSITIONS) == len(ROWS_OF_6_2)
    assert {trigger.name for trigger in Trigger} == {row[1] for row in ROWS_OF_6_2}


@pytest.mark.parametrize("state", list(SessionState))
def test_no_row_no_change(state: SessionState) -> None:
    from bits_wsgi.session import TRANSITIONS, Trigger, next_state

    for trigger in Trigger:
        if (state, trigger) in TRANSITIONS:
            continue
        with pytest.raises(ValueError, match="no transition"):
            next_state(state, trigger)
    if state.is_tombstone:  # a tombstone never changes
        assert not any(key[0] is state for key in TRANSITIONS)
