"""Round two of the hardening (PROTOCOL.md D23): each control with the test that fails without it.

The farm-wide controls (fencing across hosts) are in tests/integration/test_fencing.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import BitsClient
from .support.sessions import edit_records

GUID = "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}"


# -- §2.2: the session id is echoed on every error ------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "headers", "body"),
    [
        ("Fragment", {"Content-Range": "bytes 0-0/1", "Content-Encoding": "gzip"}, b"x"),
        ("Close-Session", {}, b"x"),
        ("Cancel-Session", {}, b"xyz"),
        ("fragment", {"Content-Range": "bytes 0-0/1", "Content-Encoding": "br"}, b"x"),
    ],
)
def test_refused_envelopes_still_echo_the_session_id(
    make_client: Callable[..., BitsClient], packet: str, headers: dict[str, str], body: bytes
) -> None:
    client = make_client()
    response = client.post(packet, {"BITS-Session-Id": GUID, **headers}, body=body)
    assert response.status_int == 400
    assert response.headers["BITS-Session-Id"] == GUID


def test_refused_create_or_ping_carries_no_session_id(
    make_client: Callable[..., BitsClient],
) -> None:
    client = make_client()
    response = client.post("Ping", {"BITS-Session-Id": GUID}, body=b"x")
    assert response.status_int == 400
    assert "BITS-Session-Id" not in response.headers


def _files_below(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


# -- §9.1: the per-identity limit is for real identities; anonymous fleets meet max_sessions ----


def test_an_anonymous_fleet_is_not_one_identity(make_client: Callable[..., BitsClient]) -> None:
    fleet = make_client(session_limit=50, max_sessions=200)
    assert [fleet.create().status_int for _ in range(80)] == [200] * 80
    alice = BitsClient(fleet.test.app, user="alice")
    assert [alice.create().status_int for _ in range(50)] == [200] * 50
    assert alice.create().status_int == 503  # a real identity keeps its limit


def test_anonymous_sessions_are_bounded_by_max_sessions(
    make_client: Callable[..., BitsClient],
) -> None:
    fleet = make_client(session_limit=50, max_sessions=60)
    statuses = [fleet.create().status_int for _ in range(61)]
    assert statuses == [200] * 60 + [503]


# -- §9.2: every name accepted at Create-Session can be committed --------------------------------


@pytest.mark.parametrize("overwrites", [True, False])
def test_a_255_byte_name_commits_with_and_without_overwrites(
    make_client: Callable[..., BitsClient], upload_dir: Path, overwrites: bool
) -> None:
    name = "n" * 251 + ".bin"
    client = make_client(path=f"/{name}", allow_overwrites=overwrites)
    assert client.create().status_int == 200
    assert client.fragment(b"payload", 0, 7).status_int == 200
    assert (upload_dir / name).read_bytes() == b"payload"
    assert client.close().status_int == 200


def test_a_255_byte_name_commits_across_filesystems(
    make_client: Callable[..., BitsClient], upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data on another filesystem (a Redis data_dir elsewhere) is copied to a staged file beside
    the destination first: that staged name must fit whatever the destination's length."""
    import errno
    import os

    real_link = os.link

    def no_cross_device_link(src: Any, dst: Any, **kw: Any) -> None:
        if "src_dir_fd" not in kw:  # from the session's data to the destination's folder
            raise OSError(errno.EXDEV, "cross-device link")
        real_link(src, dst, **kw)

    monkeypatch.setattr("bits_wsgi._files.os.link", no_cross_device_link)
    name = "x" * 255
    client = make_client(path=f"/{name}", allow_overwrites=True)
    assert client.create().status_int == 200
    assert client.fragment(b"copied", 0, 6).status_int == 200
    assert (upload_dir / name).read_bytes() == b"copied"
    assert [p.name for p in upload_dir.iterdir() if p.name.endswith(".bits-tmp")] == []


# -- §9.2 / §10.2: a folder swapped for a symlink during the commit ------------------------------


#: A local user's process: swaps two names with renameat2(RENAME_EXCHANGE), as fast as it can.
SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
print("ready", flush=True)
while True:
    if libc.renameat2(-100, a, -100, b, 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
"""


def test_commits_stay_in_the_root_while_a_local_user_swaps_folders_and_symlinks(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from bits_wsgi.backends.filesystem import FilesystemBackend
    from bits_wsgi.errors import InvalidRequest
    from bits_wsgi.paths import Destination
    from bits_wsgi.testing import new_record

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a").mkdir()
    (root / "swap").symlink_to(outside)
    backend = FilesystemBackend(root)
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(root / "a"), str(root / "swap")],
        stdout=subprocess.PIPE,
    )
    committed = refused = 0
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == b"ready\n"
        for number in range(1000):
            session = f"A0FF5911-4144-45B3-BF27-{number:012d}"
            backend.create(new_record(session))
            backend.write(session, 0, [b"x"])
            try:
                backend.commit(session, Destination(root, f"a/f{number}.bin"), overwrite=False)
                committed += 1
            except InvalidRequest:
                refused += 1
            backend.delete(session)
    finally:
        swapper.kill()  # ours, by its PID
        swapper.communicate()
    assert list(outside.iterdir()) == []
    assert committed > 0 and refused > 0  # the race was on: both outcomes happened
    landed = list(root.rglob("f*.bin"))
    assert len(landed) == committed


# -- nested roots: refused at start-up unless the prefixes nest the same way ---------------------


@pytest.mark.parametrize(
    ("outer", "inner"),
    [
        (("", "/uploads/"), ("private", "/private/")),  # the example
        (("", "/a/"), ("", "/b/")),  # one root, two prefixes: one state area for both
        (("", "/up/"), ("sub", "/up/other/")),
        (("", "/"), ("BITS-Sessions/x", "/BITS-Sessions/x/")),  # inside the state area
        (("private", "/private/"), ("", "/uploads/")),  # the same pair, listed the other way
    ],
)
def test_nesting_roots_with_other_prefixes_are_refused_at_start_up(
    tmp_path: Path, outer: tuple[str, str], inner: tuple[str, str]
) -> None:
    from bits_wsgi import BITSMiddleware, UploadDirectory

    from .conftest import fallback_app

    directories = [
        UploadDirectory(upload_dir=tmp_path / below, prefix=prefix)
        for below, prefix in (outer, inner)
    ]
    with pytest.raises(ValueError, match="inside"):
        BITSMiddleware(fallback_app, directories=directories)


def test_roots_nesting_as_their_prefixes_do_are_allowed(tmp_path: Path) -> None:
    from bits_wsgi import BITSMiddleware, UploadDirectory

    from .conftest import fallback_app

    app = BITSMiddleware(
        fallback_app,
        directories=[
            UploadDirectory(upload_dir=tmp_path, prefix="/up/"),
            UploadDirectory(upload_dir=tmp_path / "private", prefix="/up/private/"),
        ],
    )
    client = BitsClient(app, path="/up/private/BITS-Sessions/x")
    assert client.create().status_int == 400  # reaches the inner directory, which refuses it
    assert BitsClient(app, path="/up/private/f.bin").create().status_int == 200


# -- §6.3: no request for an unknown session leaves a file, lock file or key behind --------------


def _reply(upload: Any) -> Any:
    from bits_wsgi.notify import Reply

    return Reply(body=b"ok")


def test_probes_for_unknown_sessions_leave_no_file(tmp_path: Path) -> None:
    from bits_wsgi import BITSMiddleware

    from .conftest import fallback_app

    root = tmp_path / "root"
    app = BITSMiddleware(fallback_app, root, notification_type="by-value", notification_url=_reply)
    client = BitsClient(app)
    assert client.create().status_int == 200  # the state area exists, with one session
    before = _files_below(root)
    probes = [f"{{{number:08X}-4144-45B3-BF27-27AFC8EC8A67}}" for number in range(20)]
    for probe in probes:
        assert client.fragment(b"x", 0, 1, session_id=probe).status_int == 500
        assert client.close(probe).status_int == 500
        assert client.cancel(probe).status_int == 500
    for probe in probes:
        reply_url = f"/BITS-Sessions/Replies/{probe}/responsefile.bin"
        assert client.test.get(reply_url, expect_errors=True).status_int == 404
    assert _files_below(root) == before


# -- §6.4: no sweep deletes a session that received bytes less than its threshold ago ------------


def _age_record(root: Path, seconds: float) -> None:
    def age(record: dict[str, Any]) -> None:
        record["last_activity"] -= seconds
        record["created"] -= seconds

    edit_records(root, age)


@pytest.mark.parametrize("older_than", ["1", "0"])
def test_cleanup_never_deletes_a_session_that_just_received_bytes(
    make_client: Callable[..., BitsClient], upload_dir: Path, older_than: str
) -> None:
    """Activity is stored at a resolution of up to 60 s: a fragment 50 s after the last stored
    activity writes no record. `cleanup --older-than 1` right after it must keep the session."""
    import subprocess
    import sys

    client = make_client()
    assert client.create().status_int == 200
    assert client.fragment(b"abc", 0, 10).status_int == 200
    _age_record(upload_dir, 50)
    assert client.fragment(b"def", 3, 10).status_int == 200  # bytes now; no record rewrite
    result = subprocess.run(
        [sys.executable, "-m", "bits_wsgi", "cleanup", str(upload_dir), "--older-than", older_than],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "removed 0 expired sessions"
    assert client.fragment(b"ghij", 6, 10).status_int == 200
    assert (upload_dir / "f.bin").read_bytes() == b"abcdefghij"


def test_a_session_idle_past_threshold_and_resolution_is_swept(
    make_client: Callable[..., BitsClient], upload_dir: Path
) -> None:
    from bits_wsgi.cli import main

    client = make_client()
    assert client.create().status_int == 200
    assert client.fragment(b"abc", 0, 10).status_int == 200
    _age_record(upload_dir, 62)
    assert main(["cleanup", str(upload_dir), "--older-than", "1"]) == 0
    assert client.fragment(b"def", 3, 10).status_int == 500  # gone


# -- §6.3: a Create/Cancel flood keeps the state area bounded by the caps -------------------------


def test_a_create_cancel_flood_keeps_at_most_max_sessions_tombstones(
    make_client: Callable[..., BitsClient], upload_dir: Path
) -> None:
    client = make_client(max_sessions=50)
    state = upload_dir / "BITS-Sessions"
    most = 0
    for _ in range(300):
        assert client.create().status_int == 200
        assert client.cancel().status_int == 200
        most = max(most, len(list((state / "Requests").iterdir())))
    assert most <= 50
    # a folder, a record, a lock file and a marker per tombstone, and the fixed folders
    assert len(_files_below(state)) <= 4 * 50 + 10
    # the newest tombstones are the ones kept: a repeated Cancel of the last session is a 200
    assert client.cancel().status_int == 200


def test_a_sweep_enforces_the_tombstone_budget(tmp_path: Path) -> None:
    import time

    from bits_wsgi import UploadDirectory
    from bits_wsgi.backends.filesystem import FilesystemBackend
    from bits_wsgi.server import UploadServer
    from bits_wsgi.session import Trigger
    from bits_wsgi.testing import new_record

    backend = FilesystemBackend(tmp_path)
    for number in range(30):  # left by an earlier run with a larger budget
        record = new_record(f"A0FF5911-4144-45B3-BF27-{number:012d}")
        backend.create(record)
        backend.save(record.tombstone(Trigger.CLOSE, time.time() - 100 + number))
    server = UploadServer(
        UploadDirectory(upload_dir=tmp_path, max_sessions=20), backend, sweep_interval=None
    )
    assert server.sweep() == 12  # down to 90% of the budget, the oldest first
    assert backend.tombstone_count() == 18
    assert backend.oldest_tombstones(1) == ["A0FF5911-4144-45B3-BF27-000000000012"]
