"""UploadServer's session rules, without WSGI: packets in, Acks and bytes on disk out.

Each test speaks to a server built as the middleware builds it (``support.server_client``), so
it reads as a client's conversation; what the middleware adds on top is in test_middleware.py.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from bits_wsgi.backends import FilesystemBackend

from .conftest import error_of
from .support.ids import key_of
from .support.server_client import ServerClient, new_server
from .support.sessions import (
    age_sessions,
    data_files,
    per_session_files,
    records,
    sha256,
    store_raw,
    stored,
)

Make = Callable[..., ServerClient]


# -- fragments (§4) ---------------------------------------------------------------------------


def test_multi_fragment_upload_is_byte_exact(make_server: Make, upload_dir: Path) -> None:
    data = os.urandom(100_000)
    client = make_server()
    client.upload(data, fragment_size=7_000)
    assert sha256((upload_dir / "f.bin").read_bytes()) == sha256(data)


def test_first_fragment_past_zero_is_a_gap(make_server: Make) -> None:
    client = make_server()
    client.create()
    response = client.fragment(b"x" * 10, 5, 100)
    assert response.status_int == 416
    assert response.headers["BITS-Received-Content-Range"] == "0"


def test_overlap_writes_only_the_new_tail(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.create()
    client.fragment(b"A" * 10, 0, 20)
    # bytes 5..14, where 5..9 differ from what is held: held bytes are never rewritten
    response = client.fragment(b"Z" * 5 + b"B" * 5, 5, 20)
    assert response.headers["BITS-Received-Content-Range"] == "15"
    client.fragment(b"C" * 5, 15, 20)
    assert (upload_dir / "f.bin").read_bytes() == b"A" * 10 + b"B" * 5 + b"C" * 5


def test_duplicate_fragment_acks_the_current_offset(make_server: Make) -> None:
    client = make_server()
    client.create()
    client.fragment(b"x" * 10, 0, 30)
    client.fragment(b"y" * 10, 10, 30)
    response = client.fragment(b"x" * 10, 0, 30)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "20"


def test_changed_total_is_400_with_received(make_server: Make) -> None:
    client = make_server()
    client.create()
    client.fragment(b"x" * 10, 0, 30)
    response = client.fragment(b"x" * 10, 10, 31)
    assert error_of(response)[0:2] == (400, "0x80070057")
    assert response.headers["BITS-Received-Content-Range"] == "10"


def test_fragment_over_max_fragment_size_is_413(make_server: Make) -> None:
    client = make_server(max_fragment_size=8 * 1024)
    client.create()
    response = client.fragment(b"x" * (8 * 1024 + 1), 0, 10**6)
    assert error_of(response) == (413, "0x80200020", "0x5")
    assert client.fragment(b"x" * 8 * 1024, 0, 10**6).status_int == 200


def test_total_over_max_upload_size_is_500_and_stores_nothing(
    make_server: Make, upload_dir: Path
) -> None:
    client = make_server(max_upload_size=1000)
    client.create()
    response = client.fragment(b"x" * 10, 0, 1001)
    assert error_of(response) == (500, "0x80200020", "0x5")
    assert records(upload_dir)[0]["received"] == 0
    assert records(upload_dir)[0]["total"] is None


def test_fragment_to_another_path_is_400(make_server: Make) -> None:
    client = make_server(path="/a.bin")
    client.create()
    response = client.fragment(b"x", 0, 2, path="/b.bin")
    assert error_of(response)[0] == 400
    assert response.headers["BITS-Received-Content-Range"] == "0"


def test_short_body_discards_the_fragment(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.create()
    assert client.fragment(b"a" * 100, 0, 1000).status_int == 200
    response = client.post(
        "Fragment",
        {"BITS-Session-Id": client.session_id or "", "Content-Range": "bytes 100-299/1000"},
        body=b"b" * 50,
        content_length=200,  # the client went away after 50 bytes
    )
    assert response.status_int == 400
    assert response.headers["BITS-Received-Content-Range"] == "100"
    # the stray 50 bytes are cut: the resumed upload is byte-exact
    for first in range(100, 1000, 300):
        assert client.fragment(b"c" * min(300, 1000 - first), first, 1000).status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"a" * 100 + b"c" * 900


# -- zero-length files (§4.6, D13) ------------------------------------------------------------


@pytest.mark.parametrize("content_range", ["bytes */0", "bytes 0--1/0", "bytes 0-0/0"])
def test_zero_length_upload(make_server: Make, upload_dir: Path, content_range: str) -> None:
    client = make_server()
    client.create()
    response = client.post(
        "Fragment", {"BITS-Session-Id": client.session_id or "", "Content-Range": content_range}
    )
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "0"
    assert (upload_dir / "f.bin").read_bytes() == b""
    assert client.close().status_int == 200


def test_close_without_fragments_creates_nothing(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.create()
    assert client.close().status_int == 200
    assert not (upload_dir / "f.bin").exists()


# -- completion, commit, overwrite (§4.5, §10.2, D15) -----------------------------------------


def test_commit_on_final_fragment_by_default(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.upload(b"done")
    assert (upload_dir / "f.bin").read_bytes() == b"done"


def test_partial_upload_is_never_committed(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.create()
    client.fragment(b"half", 0, 8)
    assert client.close().status_int == 200
    assert not (upload_dir / "f.bin").exists()
    assert client.fragment(b"rest", 4, 8).status_int == 500


def test_commit_on_close(make_server: Make, upload_dir: Path) -> None:
    client = make_server(commit_on="close")
    client.upload(b"later")
    assert not (upload_dir / "f.bin").exists()
    assert client.close().status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"later"


def test_cancel_under_commit_on_close_commits_nothing(make_server: Make, upload_dir: Path) -> None:
    client = make_server(commit_on="close")
    client.upload(b"never")
    assert client.cancel().status_int == 200
    assert not (upload_dir / "f.bin").exists()


def test_cancel_after_commit_keeps_the_destination(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.upload(b"kept")
    assert client.cancel().status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"kept"


def test_existing_destination_refuses_create(make_server: Make, upload_dir: Path) -> None:
    upload_dir.mkdir()
    (upload_dir / "f.bin").write_bytes(b"old")
    response = make_server().create()
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert "BITS-Session-Id" not in response.headers


def test_allow_overwrites_replaces(make_server: Make, upload_dir: Path) -> None:
    upload_dir.mkdir()
    (upload_dir / "f.bin").write_bytes(b"old")
    client = make_server(allow_overwrites=True)
    client.upload(b"new")
    assert (upload_dir / "f.bin").read_bytes() == b"new"


def test_destination_appearing_mid_upload_is_403_then_resumable(
    make_server: Make, upload_dir: Path
) -> None:
    client = make_server()
    client.create()
    client.fragment(b"12345", 0, 10)
    (upload_dir / "f.bin").write_bytes(b"intruder")
    response = client.fragment(b"67890", 5, 10)
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert response.headers["BITS-Received-Content-Range"] == "10"
    assert (upload_dir / "f.bin").read_bytes() == b"intruder"
    # the session stays COMPLETE: once the file is gone, a repeated final fragment commits
    (upload_dir / "f.bin").unlink()
    again = client.fragment(b"67890", 5, 10)
    assert again.status_int == 200 and again.headers["BITS-Received-Content-Range"] == "10"
    assert (upload_dir / "f.bin").read_bytes() == b"1234567890"


def test_repeated_final_fragment_replays_the_ack(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.upload(b"abcdef", fragment_size=3)
    (upload_dir / "f.bin").unlink()  # proof that nothing is committed a second time
    response = client.fragment(b"def", 3, 6)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "6"
    assert not (upload_dir / "f.bin").exists()


def test_commit_on_close_with_destination_appearing_is_403(
    make_server: Make, upload_dir: Path
) -> None:
    client = make_server(commit_on="close")
    client.upload(b"mine")
    (upload_dir / "f.bin").write_bytes(b"theirs")
    assert error_of(client.close())[0:2] == (403, "0x80070005")
    (upload_dir / "f.bin").unlink()
    assert client.close().status_int == 200  # the session was kept
    assert (upload_dir / "f.bin").read_bytes() == b"mine"


def test_close_with_the_data_gone_is_404(make_server: Make, upload_dir: Path) -> None:
    client = make_server(commit_on="close")
    client.upload(b"vanishes")
    for data_file in data_files(upload_dir):
        data_file.unlink()
    assert error_of(client.close()) == (404, "0x80070002", "0x5")


# -- tombstones, unknown sessions, expiry (§6, D4, D16) ---------------------------------------


def test_close_and_cancel_are_idempotent(make_server: Make) -> None:
    client = make_server()
    client.upload(b"x")
    assert client.close().status_int == 200
    assert client.close().status_int == 200
    assert client.cancel().status_int == 200


def test_tombstones_survive_a_restart(upload_dir: Path) -> None:
    first = ServerClient(new_server(upload_dir))
    first.upload(b"x")
    first.close()
    second = ServerClient(new_server(upload_dir))
    assert second.close(session_id=first.session_id).status_int == 200
    assert second.fragment(b"x", 0, 1, session_id=first.session_id).status_int == 500


@pytest.mark.parametrize(
    "session_id",
    [
        "{11111111-2222-3333-4444-555555555555}",
        "not-a-guid",
        "../../../../etc/passwd",
        "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67},{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}",
    ],
)
def test_unknown_sessions_are_500_session_not_found(
    make_server: Make, upload_dir: Path, session_id: str
) -> None:
    client = make_server()
    for response in (client.fragment(b"x", 0, 1, session_id=session_id), client.close(session_id)):
        assert error_of(response) == (500, "0x8020001F", "0x5")
    # probing ids leaves nothing behind
    assert per_session_files(upload_dir) == [] and records(upload_dir) == []


def test_idle_session_expires_lazily(make_server: Make, upload_dir: Path) -> None:
    client = make_server(session_timeout=60)
    client.create()
    client.fragment(b"abc", 0, 10)
    age_sessions(upload_dir, 61)
    assert error_of(client.fragment(b"def", 3, 10)) == (500, "0x8020001F", "0x5")
    assert records(upload_dir) == []  # deleted, no tombstone


def test_activity_keeps_a_session_alive(make_server: Make, upload_dir: Path) -> None:
    client = make_server(session_timeout=60)
    client.create()
    age_sessions(upload_dir, 50)
    client.fragment(b"abc", 0, 10)
    age_sessions(upload_dir, 50)
    assert client.fragment(b"def", 3, 10).status_int == 200


def test_corrupt_record_is_session_not_found(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.create()
    for key in stored(upload_dir):
        store_raw(upload_dir, key, b"{not json")
    assert error_of(client.fragment(b"x", 0, 1)) == (500, "0x8020001F", "0x5")


# -- identity (§9.1, D8) ----------------------------------------------------------------------


def test_another_identity_gets_403_and_changes_nothing(upload_dir: Path, make_server: Make) -> None:
    alice = make_server(user="alice")
    alice.create()
    alice.fragment(b"abc", 0, 6)
    before = records(upload_dir)
    mallory = ServerClient(alice.server, user="mallory")
    for response in (
        mallory.fragment(b"xyz", 3, 6, session_id=alice.session_id),
        mallory.close(alice.session_id),
        mallory.cancel(alice.session_id),
    ):
        assert error_of(response) == (403, "0x80070005", "0x5")
    assert records(upload_dir) == before  # not even the activity time moved
    anonymous = ServerClient(alice.server)
    assert anonymous.fragment(b"xyz", 3, 6, session_id=alice.session_id).status_int == 403
    assert alice.fragment(b"def", 3, 6).status_int == 200


# -- limits and busy sessions (D16, D17) ------------------------------------------------------


def test_session_limit_per_identity(make_server: Make, upload_dir: Path) -> None:
    alice = make_server(user="alice", session_limit=2, path="/a")
    first, second = alice.create(), alice.create()
    assert first.status_int == second.status_int == 200
    refused = alice.create()
    assert error_of(refused) == (503, "0x801901F7", "0x5")
    assert refused.headers["Retry-After"] == "60"
    bob = ServerClient(alice.server, path="/a", user="bob")
    assert bob.create().status_int == 200  # limits are per identity
    alice.cancel(first.headers["BITS-Session-Id"])
    assert alice.create().status_int == 200


def test_expired_sessions_do_not_count_against_the_limit(
    make_server: Make, upload_dir: Path
) -> None:
    client = make_server(user="alice", session_limit=1, session_timeout=60)
    client.create()
    assert client.create().status_int == 503
    age_sessions(upload_dir, 61)
    assert client.create().status_int == 200


def test_session_limit_zero_disables_it(make_server: Make) -> None:
    client = make_server(session_limit=0)
    assert all(client.create().status_int == 200 for _ in range(60))


def test_global_session_cap_counts_every_identity(make_server: Make, upload_dir: Path) -> None:
    alice = make_server(user="alice", max_sessions=3, session_timeout=60)
    cap = alice.server.upkeep.session_cap  # count and sweep whenever the cap is reached
    assert cap is not None  # (how often is tests/test_session_cap.py's)
    cap.recount_interval = cap.sweep_interval = 0
    bob = ServerClient(alice.server, user="bob")
    carol = ServerClient(alice.server, user="carol")
    assert [c.create().status_int for c in (alice, bob, carol)] == [200, 200, 200]
    refused = ServerClient(alice.server, user="dave").create()
    assert error_of(refused) == (503, "0x801901F7", "0x5")
    assert refused.headers["Retry-After"] == "60"
    assert len(records(upload_dir)) == 3  # the refused Create left nothing behind
    assert carol.cancel().status_int == 200  # a tombstone frees its place
    assert ServerClient(alice.server, user="dave").create().status_int == 200
    assert bob.create().status_int == 503
    age_sessions(upload_dir, 61)  # at the cap, expired sessions are swept out first
    assert bob.create().status_int == 200


def test_global_session_cap_none_disables_it(make_server: Make) -> None:
    client = make_server(max_sessions=None, session_limit=None)
    assert all(client.create().status_int == 200 for _ in range(30))


def test_busy_session_is_503_not_session_not_found(make_server: Make, upload_dir: Path) -> None:
    client = make_server(lock_timeout=0.05)
    client.create()
    assert client.session_id is not None
    key = key_of(client.session_id)
    assert key is not None
    with FilesystemBackend(upload_dir).lock(key, 1.0):
        response = client.fragment(b"x", 0, 2)
    assert error_of(response) == (503, "0x801901F7", "0x5")
    assert response.headers["Retry-After"] == "60"
    assert client.fragment(b"x", 0, 2).status_int == 200


def test_concurrent_duplicates_of_one_fragment(make_server: Make, upload_dir: Path) -> None:
    client = make_server()
    client.create()
    data = os.urandom(200_000)
    results: list[int] = []

    def send() -> None:
        worker = ServerClient(client.server)
        results.append(worker.fragment(data, 0, len(data), session_id=client.session_id).status_int)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 4
    assert sha256((upload_dir / "f.bin").read_bytes()) == sha256(data)


# -- failures of the machine (§4.3, §5.1) -----------------------------------------------------


class FlakyDisk(FilesystemBackend):
    """Writes part of a fragment, then reports a full disk once."""

    full = True

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        if not self.full:
            return super().write(session_id, offset, chunks)
        self.full = False

        def some() -> Iterable[bytes]:
            for chunk in chunks:
                yield chunk[: len(chunk) // 2]
                raise OSError(errno.ENOSPC, "No space left on device")

        return super().write(session_id, offset, some())


def test_disk_full_is_500_and_the_session_stays_usable(upload_dir: Path) -> None:
    client = ServerClient(new_server(upload_dir, FlakyDisk(upload_dir)))
    client.create()
    response = client.fragment(b"abcdef", 0, 6)
    assert error_of(response) == (500, "0x80070070", "0x5")
    assert response.headers["BITS-Received-Content-Range"] == "0"
    assert client.fragment(b"abcdef", 0, 6).status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"abcdef"


def test_fsync_always_mode_uploads(make_server: Make, upload_dir: Path) -> None:
    data = os.urandom(50_000)
    make_server(fsync="always").upload(data, fragment_size=8_000)
    assert sha256((upload_dir / "f.bin").read_bytes()) == sha256(data)


# -- one destination, two sessions (§10.1) ----------------------------------------------------


def test_second_session_to_the_same_destination_gets_403_at_commit(
    make_server: Make, upload_dir: Path
) -> None:
    first = make_server()
    second = ServerClient(first.server)
    first.create()
    second.create()
    first.fragment(b"first", 0, 5)
    response = second.fragment(b"second", 0, 6)
    assert error_of(response) == (403, "0x80070005", "0x5")
    assert (upload_dir / "f.bin").read_bytes() == b"first"


def test_concurrent_completions_commit_exactly_one(make_server: Make, upload_dir: Path) -> None:
    first = make_server()
    clients = [first] + [ServerClient(first.server) for _ in range(5)]
    payloads = [os.urandom(50_000) for _ in clients]
    for client in clients:
        client.create()
    statuses: list[int] = []

    def complete(client: ServerClient, data: bytes) -> None:
        statuses.append(client.fragment(data, 0, len(data)).status_int)

    threads = [
        threading.Thread(target=complete, args=pair) for pair in zip(clients, payloads, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [403] * 5
    assert (upload_dir / "f.bin").read_bytes() in payloads


# -- what the data says, whatever the client or the backend claims (§9.3, §10.2) --------------


class LossyBackend(FilesystemBackend):
    """A buggy backend that silently stores less than it was given."""

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        return super().write(session_id, offset, (chunk[:-1] for chunk in chunks))


def test_a_backend_that_loses_bytes_never_moves_the_offset(upload_dir: Path) -> None:
    client = ServerClient(new_server(upload_dir, LossyBackend(upload_dir)))
    client.create()
    response = client.fragment(b"abcdef", 0, 12)
    assert error_of(response) == (500, "0x801901F4", "0x5")
    assert records(upload_dir)[0]["received"] == 0


def test_an_enormous_declared_total_allocates_nothing(make_server: Make, upload_dir: Path) -> None:
    """T and B are never trusted ahead of the data (PROTOCOL.md §9.3)."""
    client = make_server()
    client.create()
    huge = 2**63 - 1
    response = client.fragment(b"x", 0, huge)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "1"
    (data_file,) = data_files(upload_dir)
    assert data_file.stat().st_size == 1
    assert data_file.stat().st_blocks <= 8  # no sparse preallocation either


def test_a_crash_between_the_last_bytes_and_the_commit_is_recovered(
    make_server: Make, upload_dir: Path
) -> None:
    """Found by benchmarks/soak.py: a single-fragment upload whose worker died after writing the
    bytes but before recording the total. The retried fragment must complete and commit, not be
    taken for a duplicate (which would let Close discard a finished upload)."""
    client = make_server()
    client.create()
    assert client.session_id is not None
    key = key_of(client.session_id)
    assert key is not None
    FilesystemBackend(upload_dir).write(key, 0, [b"all the bytes"])  # then the worker died
    response = client.fragment(b"all the bytes", 0, 13)
    assert response.status_int == 200
    assert response.headers["BITS-Received-Content-Range"] == "13"
    assert (upload_dir / "f.bin").read_bytes() == b"all the bytes"
    assert client.close().status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"all the bytes"
