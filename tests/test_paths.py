"""Destination mapping: every rule of PROTOCOL.md §9.2 (D11)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bits_wsgi.errors import InvalidRequest
from bits_wsgi.paths import (
    check_target_length,
    destination_key,
    open_destination_parent,
    prepare_destination,
    resolve_destination,
)


def wsgi(text: str) -> str:
    """What a WSGI server puts in PATH_INFO for UTF-8 text: bytes decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize(
    ("tail", "key"),
    [
        ("f.bin", "f.bin"),
        ("a/b/c.txt", "a/b/c.txt"),
        (wsgi("crash dumps/été.dmp"), "crash dumps/été.dmp"),
        ("CONSOLE.log", "CONSOLE.log"),  # only the exact device names are refused
        ("COM10", "COM10"),
        ("...", "..."),
        ("a" * 255, "a" * 255),
        ("%2e%2e", "%2e%2e"),  # never decoded twice: a literal file name
    ],
)
def test_valid_destinations(tail: str, key: str) -> None:
    assert destination_key(tail) == key


@pytest.mark.parametrize(
    "tail",
    [
        "",
        "/",
        "a/",
        "/a",
        "a//b",
        ".",
        "..",
        "../etc/passwd",
        "a/../../b",
        "a/./b",
        "a\\b",
        "..\\..\\windows",
        "a\x00b",
        "a\x01b",
        "a\x7fb",
        "a:b",
        "a*b",
        "a?b",
        'a"b',
        "a<b",
        "a>b",
        "a|b",
        "a" * 256,
        wsgi("é" * 128),  # 256 bytes in UTF-8
        "CON",
        "con",
        "Con.txt",
        "nul.tar.gz",
        "dir/AUX",
        "COM1",
        "lpt9.log",
        "PRN ",
        "BITS-Sessions/x",
        "bits-sessions/Requests/x",
        "BITS-SESSIONS",
        "\xff\xfe",  # not UTF-8
    ],
)
def test_invalid_destinations_are_400(tail: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        destination_key(tail)
    assert (exc.value.status, exc.value.code) == (400, 0x80070057)


def test_state_dir_below_the_top_is_an_ordinary_name() -> None:
    assert destination_key("x/BITS-Sessions") == "x/BITS-Sessions"


def test_target_length_limit() -> None:
    check_target_length("/" + "a" * 2199)
    with pytest.raises(InvalidRequest):
        check_target_length("/" + "a" * 2200)


def test_resolve_inside_root(tmp_path: Path) -> None:
    assert resolve_destination(tmp_path, "a/b.bin") == tmp_path.resolve() / "a" / "b.bin"


def test_existing_directory_is_not_a_destination(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidRequest):
        resolve_destination(tmp_path, "d")


def test_file_in_the_parent_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidRequest):
        resolve_destination(tmp_path, "f/g.bin")
    with pytest.raises(InvalidRequest):
        resolve_destination(tmp_path, "f/deeper/g.bin")


def test_symlinked_directory_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidRequest):
        resolve_destination(root, "link/f.bin")


def test_symlinked_file_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").symlink_to(tmp_path / "victim")
    with pytest.raises(InvalidRequest):
        resolve_destination(root, "f.bin")


def test_symlink_into_the_state_area_is_refused(tmp_path: Path) -> None:
    (tmp_path / "BITS-Sessions").mkdir()
    (tmp_path / "sneaky").symlink_to(tmp_path / "BITS-Sessions")
    with pytest.raises(InvalidRequest):
        resolve_destination(tmp_path, "sneaky/f.bin")


def test_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert resolve_destination(tmp_path, "alias/f.bin") == tmp_path.resolve() / "real" / "f.bin"


def test_prepare_creates_parents_only_inside_the_root(tmp_path: Path) -> None:
    path = prepare_destination(tmp_path, "x/y/z.bin")
    assert path.parent.is_dir() and not path.exists()
    assert os.path.commonpath([path, tmp_path.resolve()]) == str(tmp_path.resolve())


def test_prepare_catches_a_symlink_planted_after_the_first_check(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    resolve_destination(root, "late/f.bin")
    (root / "late").symlink_to(outside)
    with pytest.raises(InvalidRequest):
        prepare_destination(root, "late/f.bin")
    assert list(outside.iterdir()) == []


def test_the_reply_location_is_built_and_read_in_one_place() -> None:
    from bits_wsgi.paths import reply_location, reply_session

    key = "A0FF5911-4144-45B3-BF27-27AFC8EC8A67"
    location = reply_location(key)
    assert location == f"BITS-Sessions/Replies/%7B{key}%7D/responsefile.bin"
    # a WSGI server hands PATH_INFO over percent-decoded
    assert reply_session(location.replace("%7B", "{").replace("%7D", "}")) == f"{{{key}}}"
    assert reply_session(f"bits-sessions/replies/{{{key}}}/responsefile.bin") == f"{{{key}}}"
    assert reply_session(f"BITS-Sessions/Replies/{{{key}}}/other.bin") == ""
    assert reply_session("dumps/f.bin") is None


def test_a_root_pointed_elsewhere_is_followed_at_the_next_resolution(tmp_path: Path) -> None:
    """The root's real path is remembered by the directory it named: pointing the root's
    path at another directory is seen at once, not at the next restart."""
    (tmp_path / "disk1").mkdir()
    (tmp_path / "disk2").mkdir()
    root = tmp_path / "uploads"
    root.symlink_to(tmp_path / "disk1")
    assert resolve_destination(root, "f.bin") == (tmp_path / "disk1" / "f.bin").resolve()
    assert resolve_destination(root, "f.bin") == (tmp_path / "disk1" / "f.bin").resolve()
    root.unlink()
    root.symlink_to(tmp_path / "disk2")
    assert resolve_destination(root, "f.bin") == (tmp_path / "disk2" / "f.bin").resolve()
    with open_destination_parent(root, "f.bin") as (folder, name):
        assert (os.stat(folder).st_ino, name) == ((tmp_path / "disk2").stat().st_ino, "f.bin")
