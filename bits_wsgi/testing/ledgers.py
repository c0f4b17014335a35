"""The contracts of the two ledgers a backend may keep: the outbox of completion events, and the
bytes each identity stored per day."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..backends.base import Outbox, UsageLedger

EVENT = "{11111111-2222-4333-8444-555555555555}"
OTHER_EVENT = "{66666666-7777-4888-8999-aaaaaaaaaaaa}"


class OutboxContract:
    """``make_outbox`` builds a fresh, empty outbox below ``root``; ``make_second_view`` the same
    outbox as another process or host sees it (by default, the same object)."""

    def make_outbox(self, root: Path) -> Outbox:
        raise NotImplementedError

    def make_second_view(self, root: Path, outbox: Outbox) -> Outbox:
        return outbox

    @pytest.fixture
    def outbox(self, tmp_path: Path) -> Outbox:
        return self.make_outbox(tmp_path)

    def test_an_added_event_is_pending_and_due_at_once(self, outbox: Outbox) -> None:
        assert outbox.add(EVENT, b'{"n": 1}', 100.0)
        entry = outbox.get(EVENT)
        assert entry is not None
        assert (entry.body, entry.state, entry.attempts, entry.created) == (
            b'{"n": 1}',
            "pending",
            0,
            100.0,
        )
        assert outbox.get(OTHER_EVENT) is None

    def test_an_event_is_added_once(self, outbox: Outbox) -> None:
        assert outbox.add(EVENT, b"first", 100.0)
        assert not outbox.add(EVENT, b"second", 200.0)
        entry = outbox.get(EVENT)
        assert entry is not None and entry.body == b"first"

    def test_a_claimed_event_is_hidden_until_its_lease_lapses(
        self, outbox: Outbox, tmp_path: Path
    ) -> None:
        outbox.add(EVENT, b"x", 100.0)
        other = self.make_second_view(tmp_path, outbox)
        (claimed,) = outbox.claim(100.0, 30.0, 10)
        assert (claimed.id, claimed.attempts) == (EVENT, 1)
        assert other.claim(110.0, 30.0, 10) == []
        (again,) = other.claim(131.0, 30.0, 10)  # the first claimer died
        assert again.attempts == 2
        # The lapsed claim's outcome no longer counts; the live one's does.
        assert not outbox.settle(claimed, "delivered", 132.0)
        assert other.settle(again, "delivered", 132.0, delivered_to=("http://a/",))
        settled = outbox.get(EVENT)
        assert settled is not None
        assert (settled.state, settled.delivered_to) == ("delivered", ("http://a/",))
        assert outbox.claim(1_000.0, 30.0, 10) == []

    def test_a_failed_delivery_is_due_again_later_with_its_error(self, outbox: Outbox) -> None:
        outbox.add(EVENT, b"x", 100.0)
        (claimed,) = outbox.claim(100.0, 30.0, 10)
        assert outbox.settle(claimed, "pending", 160.0, error="receiver answered 500")
        assert outbox.claim(150.0, 30.0, 10) == []
        (again,) = outbox.claim(160.0, 30.0, 10)
        assert (again.attempts, again.last_error) == (2, "receiver answered 500")

    def test_claims_take_the_earliest_due_first_up_to_the_limit(self, outbox: Outbox) -> None:
        outbox.add(OTHER_EVENT, b"later", 200.0)
        outbox.add(EVENT, b"earlier", 100.0)
        (first,) = outbox.claim(300.0, 30.0, 1)
        assert first.id == EVENT
        assert [entry.id for entry in outbox.claim(300.0, 30.0, 5)] == [OTHER_EVENT]

    def test_dead_letters_are_listed_and_replayed(self, outbox: Outbox) -> None:
        outbox.add(EVENT, b"x", 100.0)
        outbox.add(OTHER_EVENT, b"y", 200.0)
        (claimed,) = outbox.claim(100.0, 30.0, 1)
        assert outbox.settle(claimed, "dead", 101.0, error="gave up", delivered_to=("http://a/",))
        assert [entry.id for entry in outbox.entries()] == [OTHER_EVENT, EVENT]
        (dead,) = outbox.entries(dead_only=True)
        assert (dead.id, dead.state, dead.last_error) == (EVENT, "dead", "gave up")
        assert outbox.replay(EVENT, 500.0)
        assert not outbox.replay("{00000000-0000-4000-8000-000000000000}", 500.0)
        assert outbox.entries(dead_only=True) == []
        replayed = outbox.get(EVENT)
        assert replayed is not None
        assert (replayed.state, replayed.attempts, replayed.delivered_to) == ("pending", 0, ())
        assert EVENT in [entry.id for entry in outbox.claim(500.0, 30.0, 5)]

    def test_prune_removes_settled_entries_only(self, outbox: Outbox) -> None:
        outbox.add(EVENT, b"x", 100.0)
        outbox.add(OTHER_EVENT, b"y", 100.0)
        claimed = {entry.id: entry for entry in outbox.claim(100.0, 30.0, 5)}
        outbox.settle(claimed[EVENT], "delivered", 150.0)
        assert outbox.prune(140.0) == 0
        assert outbox.prune(151.0) == 1
        assert outbox.get(EVENT) is None
        assert outbox.get(OTHER_EVENT) is not None  # pending: never pruned
        assert [entry.id for entry in outbox.entries()] == [OTHER_EVENT]


class UsageLedgerContract:
    """``make_usage`` builds a fresh, empty ledger below ``root``."""

    def make_usage(self, root: Path) -> UsageLedger:
        raise NotImplementedError

    @pytest.fixture
    def usage(self, tmp_path: Path) -> UsageLedger:
        return self.make_usage(tmp_path)

    def test_takes_count_up_to_the_limit_and_no_further(self, usage: UsageLedger) -> None:
        assert usage.used("alice", 20_000) == 0
        assert usage.take("alice", 20_000, 600, 1_000)
        assert usage.take("alice", 20_000, 400, 1_000)
        assert not usage.take("alice", 20_000, 1, 1_000)
        assert usage.used("alice", 20_000) == 1_000
        assert not usage.take("bob", 20_000, 1_001, 1_000)
        assert usage.used("bob", 20_000) == 0

    def test_identities_and_days_count_apart(self, usage: UsageLedger) -> None:
        usage.take("alice", 20_000, 700, 1_000)
        assert usage.take("bob", 20_000, 700, 1_000)
        assert usage.take("alice", 20_001, 700, 1_000)
        assert usage.day_totals(20_000) == {"alice": 700, "bob": 700}
        assert usage.day_totals(20_001) == {"alice": 700}

    def test_a_take_given_back_frees_its_room(self, usage: UsageLedger) -> None:
        usage.take("alice", 20_000, 900, 1_000)
        usage.give_back("alice", 20_000, 500)
        assert usage.used("alice", 20_000) == 400
        assert usage.take("alice", 20_000, 600, 1_000)

    def test_day_totals_list_the_biggest_users_first(self, usage: UsageLedger) -> None:
        usage.take("alice", 20_000, 10, 1_000)
        usage.take("bob", 20_000, 30, 1_000)
        usage.take("carol", 20_000, 20, 1_000)
        assert list(usage.day_totals(20_000, limit=2).items()) == [("bob", 30), ("carol", 20)]

    def test_earlier_days_can_be_forgotten(self, usage: UsageLedger) -> None:
        usage.take("alice", 20_000, 10, 1_000)
        usage.take("alice", 20_002, 10, 1_000)
        usage.forget_before(20_002)
        assert usage.used("alice", 20_002) == 10
