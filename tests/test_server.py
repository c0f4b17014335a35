"""UploadServer without WSGI: sweeps and the in-server expiry schedule (PROTOCOL.md §6.4)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from bits_wsgi import UploadDirectory, UploadServer
from bits_wsgi.backends import FilesystemBackend
from bits_wsgi.protocol import PROTOCOL_GUID, parse
from bits_wsgi.server import RequestInfo
from bits_wsgi.wsgi.body import BodyReader

from .support.clock import Clock
from .support.ids import key_of
from .support.sessions import data_file, store_raw, stored

REQUEST = RequestInfo(identity="alice", destination="f.bin", url="http://h/f.bin")


def create(server: UploadServer, request: RequestInfo = REQUEST) -> str:
    packet = parse(
        Headers(
            {
                "BITS-Packet-Type": "Create-Session",
                "Content-Length": "0",
                "BITS-Supported-Protocols": PROTOCOL_GUID,
            }
        )
    )
    ack = server.handle(packet, request, BodyReader(lambda n: b"", 0))
    assert ack.status == 200 and ack.session_id is not None
    key = key_of(ack.session_id)
    assert key is not None
    return key


def test_sweep_removes_only_idle_sessions(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    server = UploadServer(
        UploadDirectory(upload_dir=tmp_path, session_timeout=60),
        FilesystemBackend(tmp_path),
        clock=clock,
        sweep_interval=None,
    )
    old = create(server)
    clock.now += 50
    young = create(server, RequestInfo(identity="alice", destination="g.bin", url="u"))
    clock.now += 20
    assert server.sweep() == 1
    assert server.backend.load(old) is None
    assert server.backend.load(young) is not None


def test_sweep_never_deletes_a_session_in_use(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    server = UploadServer(
        UploadDirectory(upload_dir=tmp_path, session_timeout=60),
        FilesystemBackend(tmp_path),
        clock=clock,
        sweep_interval=None,
    )
    busy = create(server)
    clock.now += 3600
    with server.backend.lock(busy, 1.0):
        assert server.sweep() == 0
    assert server.backend.load(busy) is not None
    assert server.sweep() == 1


def test_sweep_skips_unreadable_records(tmp_path: Path) -> None:
    server = UploadServer(
        UploadDirectory(upload_dir=tmp_path), FilesystemBackend(tmp_path), sweep_interval=None
    )
    key = create(server)
    store_raw(tmp_path, key, b"{")
    assert server.sweep(older_than=0) == 0
    assert key in stored(tmp_path) and data_file(tmp_path, key).exists()


def test_the_server_sweeps_by_itself_without_traffic(tmp_path: Path) -> None:
    """Sessions left from before the start, and not one request: the timer alone removes the
    stale one (no cron, no Create-Session to trigger it) and keeps the live one."""
    import threading

    from bits_wsgi.testing import SESSION_A, SESSION_B, new_record

    class CountingSweeps(FilesystemBackend):
        """Every sweep lists the sessions once: the test waits for sweeps, not for time."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.sweeps = 0
            self.swept = threading.Condition()

        def session_ids(self) -> Iterator[str]:
            yield from super().session_ids()
            with self.swept:
                self.sweeps += 1
                self.swept.notify_all()

    backend = CountingSweeps(tmp_path)
    stale, live = new_record(SESSION_A), new_record(SESSION_B)
    stale.last_activity = time.time() - 3600
    live.last_activity = time.time()
    backend.create(stale)
    backend.create(live)
    directory = UploadDirectory(upload_dir=tmp_path, session_timeout=60)
    server = UploadServer(directory, backend, sweep_interval=0.05)
    try:
        with backend.swept:  # three timed sweeps, each after the one that removed the stale
            assert backend.swept.wait_for(lambda: backend.sweeps >= 3, timeout=30)
        assert backend.load(SESSION_A) is None
        assert backend.load(SESSION_B) is not None
    finally:
        server.close()


def test_a_discarded_server_stops_sweeping(tmp_path: Path) -> None:
    """The sweeper holds its server weakly: rebuilding a middleware leaks no thread."""
    import gc
    import threading

    before = set(threading.enumerate())
    server = UploadServer(
        UploadDirectory(upload_dir=tmp_path), FilesystemBackend(tmp_path), sweep_interval=0.05
    )
    (sweeper,) = [t for t in set(threading.enumerate()) - before if t.name == "bits-wsgi-sweep"]
    del server
    gc.collect()
    sweeper.join(10)
    assert not sweeper.is_alive()


def test_a_fork_waits_for_the_sweep_in_progress(tmp_path: Path) -> None:
    """gunicorn forks workers from a process whose sweeper may be sweeping: a child forked
    while a sweep held a session's flock would keep that lock for its whole life."""
    import os
    import threading

    from bits_wsgi.testing import SESSION_A, new_record

    holding, release = threading.Event(), threading.Event()

    class SlowSweepBackend(FilesystemBackend):
        def load(self, session_id: str) -> Any:
            if threading.current_thread().name == "bits-wsgi-sweep":
                holding.set()  # the sweep holds SESSION_A's lock now
                release.wait(10)
            return super().load(session_id)

    backend = SlowSweepBackend(tmp_path)
    record = new_record(SESSION_A)
    record.last_activity = time.time()  # a live session: the sweep leaves it (and its lock file)
    backend.create(record)
    server = UploadServer(UploadDirectory(upload_dir=tmp_path), backend, sweep_interval=60)
    try:
        assert server.upkeep.sweeper is not None
        server.upkeep.sweeper.first_delay = 0.0
        server.upkeep.sweeper.stop()  # the thread started by the constructor: replaced below
        server.upkeep.sweeper._stopped = threading.Event()
        server.upkeep.sweeper._thread._pid = None  # this process may start it again
        server.upkeep.sweeper.ensure_running()
        assert holding.wait(10)
        threading.Timer(0.3, release.set).start()  # the sweep ends a little later
        child = os.fork()
        if child == 0:  # the child lives on, as a worker does, holding whatever it inherited
            import time as child_time

            child_time.sleep(3)
            os._exit(0)
        try:
            assert server.upkeep.sweep_guard.acquire(timeout=10)  # the sweep is over here
            server.upkeep.sweep_guard.release()
            with FilesystemBackend(tmp_path).lock(SESSION_A, 1.0):
                pass  # the session is free, though the child still lives
        finally:
            os.kill(child, 9)
            os.waitpid(child, 0)
    finally:
        release.set()
        server.close()


class SaveLog(FilesystemBackend):
    """The filesystem backend, noting each save's state and whether it had to reach the disk."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.saves: list[tuple[str, bool]] = []

    def save(self, record: Any, *, durable: bool = False) -> None:
        self.saves.append((record.state.value, durable))
        super().save(record, durable=durable)


def _send(server: UploadServer, key: str, kind: str, body: bytes = b"", **extra: str) -> int:
    headers = {"BITS-Packet-Type": kind, "BITS-Session-Id": key, **extra}
    headers["Content-Length"] = str(len(body))
    reader = BodyReader(io.BytesIO(body).read, len(body))
    return server.handle(parse(Headers(headers)), REQUEST, reader).status


@pytest.mark.parametrize(
    ("commit_on", "closing", "durable"),
    [
        ("final-fragment", "Close-Session", False),  # committed and recorded before the Close
        ("close", "Close-Session", True),  # this Close commits: on record before data goes
        ("final-fragment", "Cancel-Session", False),
    ],
)
def test_a_tombstone_reaches_the_disk_when_its_packet_committed(
    tmp_path: Path, commit_on: str, closing: str, durable: bool
) -> None:
    backend = SaveLog(tmp_path)
    server = UploadServer(
        UploadDirectory(upload_dir=tmp_path, commit_on=commit_on),  # type: ignore[arg-type]
        backend,
        sweep_interval=None,
    )
    key = create(server)
    if closing == "Close-Session":
        assert _send(server, key, "Fragment", b"abc", **{"Content-Range": "bytes 0-2/3"}) == 200
    assert _send(server, key, closing) == 200
    state, was_durable = backend.saves[-1]
    assert state in ("closed", "cancelled") and was_durable is durable
    if closing == "Close-Session":
        assert (tmp_path / "f.bin").read_bytes() == b"abc"
