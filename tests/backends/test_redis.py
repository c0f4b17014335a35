"""What only the Redis backend promises: several hosts, TTL locks, Redis going away."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bits_wsgi import BITSMiddleware
from bits_wsgi.backends.redis import RedisBackend
from bits_wsgi.errors import LockTimeout
from bits_wsgi.testing import SESSION_A, new_record

from ..conftest import BitsClient, error_of, fallback_app


def backend(redis_url: str, shared: Path, prefix: str, **options: float) -> RedisBackend:
    return RedisBackend(shared, url=redis_url, prefix=prefix, **options)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex}"


def test_any_host_takes_any_fragment(redis_url: str, tmp_path: Path, prefix: str) -> None:
    """Three hosts share Redis, the data directory and the upload root: any packet anywhere."""
    uploads, shared = tmp_path / "uploads", tmp_path / "shared"
    hosts = [
        BitsClient(
            BITSMiddleware(fallback_app, uploads, backend=backend(redis_url, shared, prefix))
        )
        for _ in range(3)
    ]
    data = os.urandom(50_000)
    assert hosts[0].create().status_int == 200
    session = hosts[0].session_id
    for number, first in enumerate(range(0, len(data), 4_000)):
        host = hosts[number % 3]
        response = host.fragment(data[first : first + 4_000], first, len(data), session_id=session)
        assert response.status_int == 200
    assert hosts[2].close(session).status_int == 200
    assert (uploads / "f.bin").read_bytes() == data
    assert hosts[1].close(session).status_int == 200  # the tombstone is shared too


def test_session_limit_is_shared(redis_url: str, tmp_path: Path, prefix: str) -> None:
    apps = [
        BITSMiddleware(
            fallback_app,
            tmp_path / "uploads",
            backend=backend(redis_url, tmp_path / "shared", prefix),
            session_limit=1,
        )
        for _ in range(2)
    ]
    assert BitsClient(apps[0], user="alice").create().status_int == 200
    assert error_of(BitsClient(apps[1], user="alice").create())[0] == 503


def test_a_dead_holders_lock_expires(redis_url: str, tmp_path: Path, prefix: str) -> None:
    store = backend(redis_url, tmp_path, prefix, lock_ttl=0.5)
    # a host that took the lock and died: nobody renews or releases it
    store.client.set(f"{prefix}:lock:{SESSION_A}", "dead-host-token", px=500)
    with pytest.raises(LockTimeout), store.lock(SESSION_A, 0.1):
        pass
    began = time.monotonic()
    with store.lock(SESSION_A, 5.0):
        waited = time.monotonic() - began
    assert waited < 2.0  # seconds, not minutes


def test_a_live_holder_keeps_its_lock_past_the_ttl(
    redis_url: str, tmp_path: Path, prefix: str
) -> None:
    holder = backend(redis_url, tmp_path, prefix, lock_ttl=0.3)
    other = backend(redis_url, tmp_path, prefix, lock_ttl=0.3)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.lock(SESSION_A, 1.0):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        deadline = time.monotonic() + 1.2  # four TTLs
        while time.monotonic() < deadline:
            with pytest.raises(LockTimeout), other.lock(SESSION_A, 0.05):
                pass
    finally:
        release.set()
        thread.join()
    with other.lock(SESSION_A, 1.0):
        pass


def test_only_the_holder_releases(redis_url: str, tmp_path: Path, prefix: str) -> None:
    store = backend(redis_url, tmp_path, prefix, lock_ttl=5)
    with store.lock(SESSION_A, 1.0):
        store.client.set(f"{prefix}:lock:{SESSION_A}", "someone-else")  # the lock was taken over
    assert store.client.get(f"{prefix}:lock:{SESSION_A}") == b"someone-else"


def test_records_expire_in_redis(redis_url: str, tmp_path: Path, prefix: str) -> None:
    store = backend(redis_url, tmp_path, prefix)
    store.create(new_record())
    ttl = store.client.ttl(f"{prefix}:session:{SESSION_A}")
    assert 0 < ttl <= store.record_ttl


def test_redis_unreachable_is_503(tmp_path: Path) -> None:
    from ..support.ports import free_port as closed_port

    unreachable = RedisBackend(tmp_path / "shared", url=f"redis://127.0.0.1:{closed_port()}/0")
    client = BitsClient(BITSMiddleware(fallback_app, tmp_path / "uploads", backend=unreachable))
    response = client.create()
    assert error_of(response) == (503, "0x801901F7", "0x5")
    assert response.headers["Retry-After"] == "60"
    response = client.fragment(b"x", 0, 1, session_id="{" + SESSION_A + "}")
    assert error_of(response) == (503, "0x801901F7", "0x5")


def _age(store: RedisBackend, session_id: str, seconds: float) -> None:
    record = store.load(session_id)
    assert record is not None
    record.last_activity -= seconds
    store.save(record)


def test_cleanup_across_hosts(redis_url: str, tmp_path: Path, prefix: str) -> None:
    """Two hosts sweep the same shared state at once: each expired session goes exactly once,
    and a session whose lock is held (a fragment streaming) survives, however old."""
    from bits_wsgi import UploadDirectory, UploadServer

    shared, uploads = tmp_path / "shared", tmp_path / "uploads"
    store = backend(redis_url, shared, prefix)
    ids = [str(uuid.uuid4()).upper() for _ in range(40)]
    for session_id in ids:
        record = new_record(session_id)
        store.create(record)
        _age(store, session_id, 7200)
    busy = ids[0]
    servers = [
        UploadServer(
            UploadDirectory(upload_dir=uploads),
            backend(redis_url, shared, prefix),
            sweep_interval=None,
        )
        for _ in range(2)
    ]
    removed: list[int] = []
    with store.lock(busy, 1.0):
        threads = [
            threading.Thread(target=lambda s=server: removed.append(s.sweep(older_than=3600)))
            for server in servers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(removed) == len(ids) - 1
    assert store.load(busy) is not None
    assert [i for i in ids if store.load(i) is not None] == [busy]


def test_cleanup_command_against_redis(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bits_wsgi.cli import main

    url = redis_url.rsplit("/", 1)[0] + "/1"  # a database of its own: the default key prefix
    shared, uploads = tmp_path / "shared", tmp_path / "uploads"
    uploads.mkdir()
    store = RedisBackend(shared, url=url)
    store.client.flushdb()
    for number in range(5):
        session_id = str(uuid.uuid4()).upper()
        record = new_record(session_id)
        record.last_activity = time.time()
        store.create(record)
        if number < 3:
            _age(store, session_id, 7200)
    arguments = ["--backend", url, "--data-dir", str(shared)]
    assert main(["cleanup", str(uploads), *arguments, "--older-than", "3600"]) == 0
    assert capsys.readouterr().out.strip() == "removed 3 expired sessions"
    assert main(["sessions", str(uploads), *arguments, "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["cleanup", str(uploads), "--data-dir", str(shared)]) == 2  # needs --backend


def test_a_forked_worker_starts_without_the_parents_lock_state(
    redis_url: str, tmp_path: Path, prefix: str
) -> None:
    """A fork while the renewer held the backend's internal guard must not leave the child's
    guard locked forever (every lock() would hang)."""
    store = backend(redis_url, tmp_path / "shared", prefix)
    with store.lock(SESSION_A, 1.0), store.locker._held_guard:  # as if the renewer were copying
        child = os.fork()
        if child == 0:
            try:
                with store.lock("C85B4E0A-9EB9-4114-BFA4-8A43B4710091", 2.0):
                    os._exit(0)
            finally:
                os._exit(1)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(child, 9)
            os.waitpid(child, 0)
            raise AssertionError("the child hung on the parent's guard")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_probes_for_unknown_sessions_leave_no_key(
    redis_url: str, tmp_path: Path, prefix: str
) -> None:
    """PROTOCOL.md §6.3 (D23): a Fragment, Close or Cancel with an id nobody created, or a lock
    taken on one, leaves no key in Redis and no file in the shared directory."""
    store = backend(redis_url, tmp_path / "shared", prefix)
    client = BitsClient(BITSMiddleware(fallback_app, tmp_path / "uploads", backend=store))
    assert client.create().status_int == 200
    keys = set(store.client.keys(f"{prefix}:*"))
    files = set((tmp_path / "shared").rglob("*"))
    for number in range(10):
        probe = f"{{{number:08X}-4144-45B3-BF27-27AFC8EC8A67}}"
        assert client.fragment(b"x", 0, 1, session_id=probe).status_int == 500
        assert client.close(probe).status_int == 500
        assert client.cancel(probe).status_int == 500
    assert set(store.client.keys(f"{prefix}:*")) == keys
    assert set((tmp_path / "shared").rglob("*")) == files


def test_a_create_cancel_flood_keeps_redis_bounded(
    redis_url: str, tmp_path: Path, prefix: str
) -> None:
    store = backend(redis_url, tmp_path / "shared", prefix)
    client = BitsClient(
        BITSMiddleware(fallback_app, tmp_path / "uploads", backend=store, max_sessions=40)
    )
    for _ in range(200):
        assert client.create().status_int == 200
        assert client.cancel().status_int == 200
    assert store.tombstone_count() <= 40
    # a record per tombstone, and the index keys (sessions, tombstones)
    assert len(store.client.keys(f"{prefix}:*")) <= 40 + 5
    assert len(list((tmp_path / "shared" / "Requests").iterdir())) <= 40


# -- fencing (PROTOCOL.md §10.1, D23): a holder whose lease expired changes nothing -------------


class _StalledBody:
    """A fragment body that sends ``head``, then waits (a paused host), then either drops the
    connection or sends ``rest``."""

    def __init__(self, head: bytes, rest: bytes, drop: bool) -> None:
        self.head, self.rest, self.drop = head, rest, drop
        self.stalled, self.wake = threading.Event(), threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        self.stalled.set()
        assert self.wake.wait(30)
        if self.drop:
            raise ConnectionResetError("the client went away")
        yield self.rest


@pytest.mark.parametrize("drop", [True, False], ids=["cut-back", "rest-of-body"])
def test_a_stale_holder_cannot_touch_the_committed_file(
    redis_url: str, tmp_path: Path, prefix: str, drop: bool
) -> None:
    from bits_wsgi.errors import LeaseLost
    from bits_wsgi.paths import Destination

    shared, uploads = tmp_path / "shared", tmp_path / "uploads"
    uploads.mkdir()
    stale, fresh = backend(redis_url, shared, prefix), backend(redis_url, shared, prefix)
    record = new_record()
    stale.create(record)
    data = os.urandom(3 * 1024 * 1024)
    body = _StalledBody(data[: len(data) // 2], b"\0" * (len(data) // 2), drop)
    outcome: list[BaseException | int] = []

    def stale_host() -> None:
        try:
            with stale.lock(SESSION_A, 1.0):
                outcome.append(stale.write(SESSION_A, 0, body))
                record.received = len(data)
                stale.save(record)
        except BaseException as exc:  # what the stale holder ends with
            outcome.append(exc)

    thread = threading.Thread(target=stale_host)
    thread.start()
    assert body.stalled.wait(10)
    # the paused host's lease expires; another host takes the session over and finishes it
    stale.client.delete(f"{prefix}:lock:{SESSION_A}")
    with fresh.lock(SESSION_A, 1.0):
        assert fresh.write(SESSION_A, 0, [data]) == len(data)
        fresh.sync(SESSION_A)
        fresh.commit(SESSION_A, Destination(uploads, "dir/f.bin"), overwrite=False)
    body.wake.set()  # the paused host wakes up
    thread.join(30)
    committed = uploads / "dir" / "f.bin"
    assert committed.read_bytes() == data
    if drop:
        assert isinstance(outcome[-1], ConnectionResetError)
    else:
        assert isinstance(outcome[-1], LeaseLost)  # its record save was refused
    loaded = fresh.load(SESSION_A)
    assert loaded is not None and loaded.received == len(data)
