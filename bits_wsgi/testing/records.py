"""The contract of a record store: records replaced whole, and the indexes over them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..backends.base import RecordStore
from ..session import SessionState, Trigger
from .values import SESSION_A, SESSION_B, new_record


class RecordStoreContract:
    """``make_records`` builds a fresh, empty record store below ``root``."""

    def make_records(self, root: Path) -> RecordStore:
        raise NotImplementedError

    @pytest.fixture
    def records(self, tmp_path: Path) -> RecordStore:
        return self.make_records(tmp_path)

    def test_unknown_session_loads_as_none(self, records: RecordStore) -> None:
        assert records.load(SESSION_A) is None
        assert not records.exists(SESSION_A)

    def test_created_record_loads_back(self, records: RecordStore) -> None:
        records.create(new_record())
        assert records.load(SESSION_A) == new_record()
        assert records.exists(SESSION_A)

    def test_records_are_kept_as_stored(self, records: RecordStore) -> None:
        """The offset rule is the composition's: a record store returns what was saved."""
        records.create(new_record())
        changed = new_record()
        changed.received, changed.total, changed.last_activity = 5, 10, 2_000.0
        records.save(changed)
        assert records.load(SESSION_A) == changed
        records.save(changed, durable=True)
        assert records.load(SESSION_A) == changed

    def test_loaded_records_are_copies(self, records: RecordStore) -> None:
        records.create(new_record())
        loaded = records.load(SESSION_A)
        assert loaded is not None
        loaded.received = 99
        again = records.load(SESSION_A)
        assert again is not None and again.received == 0

    def test_active_sessions_per_owner(self, records: RecordStore) -> None:
        assert records.active_count() == 0
        records.create(new_record(SESSION_A, "alice"))
        records.create(new_record(SESSION_B, "bob"))
        assert records.active_sessions("alice") == [SESSION_A]
        assert records.active_sessions("bob") == [SESSION_B]
        assert records.active_sessions("carol") == []
        assert records.active_count() == 2

    def test_a_tombstone_leaves_the_active_indexes(self, records: RecordStore) -> None:
        records.create(new_record(SESSION_A, "alice"))
        records.create(new_record(SESSION_B, "bob"))
        records.save(new_record(SESSION_A).tombstone(Trigger.CLOSE, 2_000.0), durable=True)
        assert records.active_sessions("alice") == []
        assert records.active_count() == 1
        assert sorted(records.session_ids()) == sorted([SESSION_A, SESSION_B])
        loaded = records.load(SESSION_A)
        assert loaded is not None and loaded.state is SessionState.CLOSED

    def test_tombstones_are_counted_and_listed_oldest_first(self, records: RecordStore) -> None:
        assert records.tombstone_count() == 0
        records.create(new_record(SESSION_A, "alice"))
        records.create(new_record(SESSION_B, "bob"))
        tombstone = new_record(SESSION_A).tombstone(Trigger.CANCEL, 2_000.0)
        records.save(new_record(SESSION_B, "bob").tombstone(Trigger.CLOSE, 3_000.0))
        records.save(tombstone)
        assert records.tombstone_count() == 2
        assert records.oldest_tombstones(5) == [SESSION_A, SESSION_B]
        assert records.oldest_tombstones(1) == [SESSION_A]
        assert records.oldest_tombstones(0) == []
        records.delete(SESSION_A, tombstone)
        assert records.tombstone_count() == 1
        assert records.oldest_tombstones(5) == [SESSION_B]

    def test_delete_forgets_the_record_and_its_index_entries(self, records: RecordStore) -> None:
        records.create(new_record(SESSION_A, "alice"))
        tombstone = new_record(SESSION_B, "bob").tombstone(Trigger.CANCEL, 2_000.0)
        records.create(new_record(SESSION_B, "bob"))
        records.save(tombstone)
        records.delete(SESSION_A, new_record(SESSION_A, "alice"))
        records.delete(SESSION_B, tombstone)
        assert records.load(SESSION_A) is None and records.load(SESSION_B) is None
        assert not records.exists(SESSION_A)
        assert list(records.session_ids()) == []
        assert records.active_sessions("alice") == []
        assert records.active_count() == 0
        assert records.tombstone_count() == 0
        records.delete(SESSION_A, None)  # twice, and without the record, is fine
