"""The contract of a blob store: bytes written at an offset, cut back on failure, committed."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from ..backends.base import BlobStore
from ..errors import DestinationExists, LeaseLost
from ..paths import Destination
from .values import DESTINATION, SESSION_A, Destinations, Failing


class BlobStoreContract(Destinations):
    """``make_blobs`` builds a fresh blob store; commits go below ``root`` (see
    ``Destinations`` for stores that publish elsewhere)."""

    def make_blobs(self, root: Path) -> BlobStore:
        raise NotImplementedError

    @pytest.fixture
    def blobs(self, root: Path) -> BlobStore:
        blobs = self.make_blobs(root)
        blobs.create_data(SESSION_A, DESTINATION)
        return blobs

    def commit(self, blobs: BlobStore, root: Path, *, overwrite: bool = False) -> None:
        blobs.sync(SESSION_A)
        blobs.commit(SESSION_A, Destination(root, DESTINATION), overwrite=overwrite)

    def test_new_data_is_empty_and_unknown_data_is_none(self, blobs: BlobStore) -> None:
        assert blobs.data_size(SESSION_A) == 0
        assert blobs.data_size("C85B4E0A-9EB9-4114-BFA4-8A43B4710091") is None

    def test_write_appends_at_the_offset(self, blobs: BlobStore) -> None:
        assert blobs.write(SESSION_A, 0, [b"abc", b"def"]) == 6
        assert blobs.write(SESSION_A, 6, [b"gh"]) == 2
        assert blobs.data_size(SESSION_A) == 8

    def test_write_cuts_stray_bytes_past_the_offset(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"0123456789"])
        blobs.write(SESSION_A, 4, [b"XY"])
        assert blobs.data_size(SESSION_A) == 6
        self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b"0123XY"

    def test_a_failed_write_is_cut_back_at_once(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"abc"])
        with pytest.raises(OSError):
            blobs.write(SESSION_A, 3, Failing(b"partial"))
        assert blobs.data_size(SESSION_A) == 3
        blobs.write(SESSION_A, 3, [b"def"])
        self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b"abcdef"

    def test_a_fence_that_fails_changes_nothing(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"abc"])

        def lease_lost() -> None:
            raise LeaseLost("lock lost")

        with pytest.raises(LeaseLost):
            blobs.write(SESSION_A, 0, [b"XYZW"], fence=lease_lost)
        assert blobs.data_size(SESSION_A) == 3
        called: list[bool] = []
        assert blobs.write(SESSION_A, 3, [b"def"], fence=lambda: called.append(True)) == 3
        assert called
        self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b"abcdef"

    def test_what_a_store_keeps_while_held_follows_its_own_changes(
        self, blobs: BlobStore, root: Path
    ) -> None:
        with blobs.holding(SESSION_A):
            assert blobs.data_size(SESSION_A) == 0
            blobs.write(SESSION_A, 0, [b"abcd"])
            assert blobs.data_size(SESSION_A) == 4
            blobs.write(SESSION_A, 1, [b"XY"])
            assert blobs.data_size(SESSION_A) == 3
            blobs.discard_data(SESSION_A)
            assert blobs.data_size(SESSION_A) is None

    def test_rotation_keeps_the_bytes(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"before"])
        blobs.rotate(SESSION_A)
        blobs.write(SESSION_A, 6, [b"after"])
        assert blobs.data_size(SESSION_A) == 11
        self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b"beforeafter"

    def test_commit_publishes_the_exact_bytes(self, blobs: BlobStore, root: Path) -> None:
        payload = os.urandom(300_000)
        blobs.write(SESSION_A, 0, [payload[:100_000], payload[100_000:]])
        self.commit(blobs, root)
        committed = self.read_destination(root, DESTINATION)
        assert committed is not None
        assert hashlib.sha256(committed).digest() == hashlib.sha256(payload).digest()
        path = root / DESTINATION
        if path.exists():  # files: an ordinary file, and no staging files left
            assert not stat.S_IMODE(path.stat().st_mode) & 0o111
            assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []

    def test_commit_of_an_empty_upload(self, blobs: BlobStore, root: Path) -> None:
        self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b""

    def test_destination_exists(self, blobs: BlobStore, root: Path) -> None:
        assert not blobs.destination_exists(Destination(root, DESTINATION))
        self.place_destination(root, DESTINATION, b"theirs")
        assert blobs.destination_exists(Destination(root, DESTINATION))

    def test_commit_refuses_an_existing_destination(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"mine"])
        self.place_destination(root, DESTINATION, b"theirs")
        with pytest.raises(DestinationExists):
            self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b"theirs"

    def test_commit_overwrites_when_allowed(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"mine"])
        self.place_destination(root, DESTINATION, b"theirs")
        self.commit(blobs, root, overwrite=True)
        assert self.read_destination(root, DESTINATION) == b"mine"

    def test_commit_is_idempotent(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"once"])
        self.commit(blobs, root)
        self.commit(blobs, root)
        assert self.read_destination(root, DESTINATION) == b"once"

    def test_commit_without_data_is_file_not_found(self, blobs: BlobStore, root: Path) -> None:
        blobs.discard_data(SESSION_A)
        with pytest.raises(FileNotFoundError):
            blobs.commit(SESSION_A, Destination(root, DESTINATION), overwrite=False)
        assert self.read_destination(root, DESTINATION) is None

    def test_the_committed_file_outlives_the_data(self, blobs: BlobStore, root: Path) -> None:
        blobs.write(SESSION_A, 0, [b"keep"])
        self.commit(blobs, root)
        blobs.delete_data(SESSION_A)
        assert blobs.data_size(SESSION_A) is None
        assert self.read_destination(root, DESTINATION) == b"keep"

    def test_discard_and_delete_are_idempotent(self, blobs: BlobStore) -> None:
        blobs.write(SESSION_A, 0, [b"abc"])
        blobs.discard_data(SESSION_A)
        assert blobs.data_size(SESSION_A) is None
        blobs.discard_data(SESSION_A)
        blobs.delete_data(SESSION_A)
        blobs.delete_data(SESSION_A)
        assert blobs.data_size(SESSION_A) is None

    def test_local_files_hold_the_data(self, blobs: BlobStore) -> None:
        files = blobs.files
        if files is None:
            return  # declared: no files here (BackendContract checks reply mode refuses it)
        blobs.write(SESSION_A, 0, [b"the upload"])
        assert files.data_path(SESSION_A).read_bytes() == b"the upload"
        blobs.discard_data(SESSION_A)
        assert not files.data_path(SESSION_A).exists()
