"""Faults of the machine: a disk that fills up (a real one where the tests may mount a small
tmpfs, and the same at the OS-call boundary everywhere), records corrupted or half-written, and
a wall clock that jumps."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest

from bits_wsgi import BITSMiddleware, UploadDirectory, UploadServer
from bits_wsgi.backends import files as files_module
from bits_wsgi.backends.filesystem import FilesystemBackend

from .conftest import BitsClient, error_of, fallback_app
from .support.clock import Clock
from .support.sessions import data_files, store_raw, stored

KiB = 1024
DISK_FULL = (500, "0x80070070", "0x5")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own, where this machine lets the tests mount one (root, CI)."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _upload_until_full(client: BitsClient, data: bytes, fragment: int) -> tuple[int, Any]:
    """Send fragments until one fails; return the offset reached and the failing response."""
    offset = 0
    while offset < len(data):
        response = client.fragment(data[offset : offset + fragment], offset, len(data))
        if response.status_int != 200:
            return offset, response
        offset = int(response.headers["BITS-Received-Content-Range"])
    raise AssertionError("the disk never filled up")


def test_a_real_full_disk_is_500_disk_full_and_resumes_when_space_returns(
    small_disk: Path,
) -> None:
    uploads = small_disk / "uploads"
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (1024 * KiB))
    client = BitsClient(BITSMiddleware(fallback_app, uploads))
    data = os.urandom(1536 * KiB)  # more than is left
    assert client.create().status_int == 200

    offset, failed = _upload_until_full(client, data, 128 * KiB)
    assert error_of(failed) == DISK_FULL
    assert int(failed.headers["BITS-Received-Content-Range"]) == offset  # nothing moved
    assert 0 < offset < len(data)
    assert not (uploads / "f.bin").exists()  # nothing committed
    (held,) = data_files(uploads)
    assert held.stat().st_size == offset  # the partial fragment was cut back

    ballast.unlink()  # space returns
    while offset < len(data):
        response = client.fragment(data[offset : offset + 128 * KiB], offset, len(data))
        assert response.status_int == 200, response.headers
        offset = int(response.headers["BITS-Received-Content-Range"])
    assert sha256((uploads / "f.bin").read_bytes()) == sha256(data)
    assert client.close().status_int == 200


def test_a_create_on_a_full_disk_is_500_disk_full(small_disk: Path) -> None:
    uploads = small_disk / "uploads"
    client = BitsClient(BITSMiddleware(fallback_app, uploads))
    filler = small_disk / "filler"
    with open(filler, "wb") as out, pytest.raises(OSError) as full:
        while True:
            out.write(b"\0" * 64 * KiB)
            out.flush()
    assert full.value.errno == errno.ENOSPC
    assert error_of(client.create()) == DISK_FULL
    filler.unlink()
    assert client.create().status_int == 200


def test_below_the_disk_floor_new_sessions_wait_and_running_ones_finish(
    small_disk: Path,
) -> None:
    """min_free_disk: a Create below it gets 503 + Retry-After (Windows retries, PROTOCOL.md
    §5.2); a session already open uploads into the room that is left, and commits."""
    uploads = small_disk / "uploads"
    app = BITSMiddleware(
        fallback_app, uploads, min_free_disk=1024 * KiB, status_path="/status/", status_public=True
    )
    running = BitsClient(app, path="/running.bin")
    assert running.create().status_int == 200
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (1200 * KiB))  # leaves less than the floor free

    waiting = BitsClient(app, path="/waiting.bin")
    refused = waiting.create()
    assert error_of(refused) == (503, "0x801901F7", "0x5")
    assert refused.headers["Retry-After"] == "60"
    # the operators see why (docs/deployment.md, the status page)
    page = webtest.TestApp(app)
    status = page.get("/status/", headers={"Accept": "application/json"}).json
    health = status["directories"][0]["health"]
    assert health["disk_floor"] == 1024 * KiB and health["below_disk_floor"] is True
    assert "Floor 1.0 MiB: new sessions wait." in page.get("/status/").text
    data = os.urandom(300 * KiB)
    for first in range(0, len(data), 100 * KiB):
        answer = running.fragment(data[first : first + 100 * KiB], first, len(data))
        assert answer.status_int == 200
    assert running.close().status_int == 200
    assert (uploads / "running.bin").read_bytes() == data

    ballast.unlink()
    assert waiting.create().status_int == 200


class _FillingDisk:
    """``os.pwrite`` on a disk with ``free`` bytes left: a short write, then ENOSPC, as the
    kernel does. The fallback where no small filesystem can be mounted."""

    def __init__(self, free: int) -> None:
        self.free = free
        self._pwrite: Callable[[int, Any, int], int] = os.pwrite

    def __call__(self, fd: int, data: Any, offset: int) -> int:
        if self.free <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = self._pwrite(fd, memoryview(data)[: self.free], offset)
        self.free -= count
        return count


def test_a_full_disk_at_the_os_call_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _FillingDisk(free=300 * KiB)
    monkeypatch.setattr(files_module.os, "pwrite", disk)
    uploads = tmp_path / "uploads"
    client = BitsClient(BITSMiddleware(fallback_app, uploads))
    data = os.urandom(512 * KiB)
    assert client.create().status_int == 200
    offset, failed = _upload_until_full(client, data, 64 * KiB)
    assert error_of(failed) == DISK_FULL
    assert offset == 256 * KiB  # four whole fragments; the fifth was cut back
    (held,) = data_files(uploads)
    assert held.stat().st_size == offset
    assert not (uploads / "f.bin").exists()
    disk.free = 10**9
    while offset < len(data):
        response = client.fragment(data[offset : offset + 64 * KiB], offset, len(data))
        assert response.status_int == 200
        offset = int(response.headers["BITS-Received-Content-Range"])
    assert sha256((uploads / "f.bin").read_bytes()) == sha256(data)


# -- records corrupted or half-written -------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="half-written"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"\0" * len(raw), id="zeroed"),
        pytest.param(lambda raw: raw.replace(b'"state":"', b'"state":"X'), id="unknown-state"),
        pytest.param(lambda raw: raw.replace(b'"received":', b'"received":-'), id="negative"),
        pytest.param(lambda raw: bytes(b ^ 0x20 for b in raw), id="bit-flipped"),
    ],
)
def test_a_damaged_record_is_an_unknown_session_and_nothing_else_breaks(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    uploads = tmp_path / "uploads"
    app = BITSMiddleware(fallback_app, uploads)
    victim, bystander = BitsClient(app, path="/a.bin"), BitsClient(app, path="/b.bin")
    assert victim.create().status_int == 200
    assert victim.fragment(b"abc", 0, 6).status_int == 200
    assert bystander.create().status_int == 200
    key = next(key for key in stored(uploads) if victim.session_id and key in victim.session_id)
    store_raw(uploads, key, damage(stored(uploads)[key]))

    for response in (victim.fragment(b"def", 3, 6), victim.close()):
        assert error_of(response) == (500, "0x8020001F", "0x5")  # the client starts over
    assert not (uploads / "a.bin").exists()
    assert victim.create().status_int == 200  # starting over works
    assert bystander.fragment(b"xyz", 0, 3).status_int == 200
    assert (uploads / "b.bin").read_bytes() == b"xyz"
    # Sweeps pass over the damaged record without crashing, even long after, and leave it for
    # the operator: a record this version cannot read may be a newer version's (a farm in the
    # middle of an upgrade), so it is never deleted on a guess (docs/security.md).
    future = UploadServer(
        UploadDirectory(upload_dir=uploads),
        FilesystemBackend(uploads),
        sweep_interval=None,
        clock=lambda: time.time() + 30 * 86_400,
    )
    assert future.sweep() == 2  # the bystander's tombstone and the victim's fresh session
    assert key in stored(uploads)


# -- the wall clock jumps --------------------------------------------------------------------


def _server(uploads: Path, clock: Clock, timeout: float = 3600) -> BitsClient:
    directory = UploadDirectory(upload_dir=uploads, session_timeout=timeout)
    app = BITSMiddleware(fallback_app, directories=[directory])
    app.servers = [
        UploadServer(
            directory,
            FilesystemBackend(uploads),
            clock=clock,
            sweep_interval=None,
            events=app.events,
        )
    ]
    return BitsClient(app)


def test_a_clock_that_jumps_back_expires_nothing(tmp_path: Path) -> None:
    clock = Clock()
    client = _server(tmp_path, clock)
    assert client.create().status_int == 200
    assert client.fragment(b"abc", 0, 9).status_int == 200
    clock.now -= 30 * 86_400  # a month back: every record's activity is in the future
    assert client.fragment(b"def", 3, 9).status_int == 200
    assert client.test.app.servers[0].sweep() == 0
    clock.now += 30 * 86_400 + 1800  # back to the true time, and half a timeout on
    assert client.fragment(b"ghi", 6, 9).status_int == 200
    assert (tmp_path / "f.bin").read_bytes() == b"abcdefghi"


def test_a_clock_that_jumps_forward_expires_by_wall_time_and_loses_nothing_committed(
    tmp_path: Path,
) -> None:
    clock = Clock()
    client = _server(tmp_path, clock)
    done = BitsClient(client.test.app, path="/done.bin")
    done.upload(b"committed before the jump")
    assert client.create().status_int == 200
    assert client.fragment(b"abc", 0, 9).status_int == 200
    clock.now += 2 * 3600  # past the session timeout
    # The idle session expired by the wall clock: the client is told to start over, and its
    # bytes go; the committed upload stays.
    assert error_of(client.fragment(b"def", 3, 9))[:2] == (500, "0x8020001F")
    assert (tmp_path / "done.bin").read_bytes() == b"committed before the jump"
    # the finished upload's session is idle as long: the sweep expires it, its file stays
    assert client.test.app.servers[0].sweep() == 1
    assert (tmp_path / "done.bin").read_bytes() == b"committed before the jump"
    assert data_files(tmp_path) == []


def test_expiry_is_measured_from_the_last_activity_not_the_creation(tmp_path: Path) -> None:
    clock = Clock()
    client = _server(tmp_path, clock, timeout=3600)
    assert client.create().status_int == 200
    for step in range(5):  # five hours of steady activity, 50 minutes apart
        clock.now += 3000
        assert client.fragment(b"x", step, 10).status_int == 200
    assert FilesystemBackend(tmp_path).load(client.session_id.strip("{}")) is not None
