"""URL path → destination file. Every rule of PROTOCOL.md §9.2 (D11) lives here.

No other module builds a filesystem path from client input. A destination is first reduced to a
*key* (``"dir/file.bin"``, checked for syntax only), then resolved against the upload root, where
symlinks are followed and the result must stay inside the root and outside the state area.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import unicodedata
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest
from .protocol import MAX_URL_LENGTH

#: Folder below every upload root that holds sessions and replies; never a destination.
STATE_DIR_NAME = "BITS-Sessions"
#: Where replies are, below an upload directory's prefix (URLs) and its state (files), as IIS
#: lays them out: ``BITS-Sessions/Replies/{ID}/responsefile.bin``.
REPLIES_FOLDER = "Replies"
REPLY_NAME = "responsefile.bin"
_REPLIES_BELOW_PREFIX = f"{STATE_DIR_NAME}/{REPLIES_FOLDER}/"
MAX_SEGMENT_BYTES = 255

_FORBIDDEN_CHARS = frozenset('\\:*?"<>|')
_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{n}" for n in range(1, 10)]
    + [f"LPT{n}" for n in range(1, 10)]
)


def check_target_length(target: str) -> None:
    if len(target) > MAX_URL_LENGTH:
        raise InvalidRequest(f"request target longer than {MAX_URL_LENGTH} characters")


def destination_key(path_below_prefix: str) -> str:
    """The destination key of a WSGI ``PATH_INFO`` tail (already percent-decoded, latin-1).

    It is never percent-decoded again: ``%2e%2e`` arrives here as the literal text the client
    meant, or as ``..`` if the WSGI server decoded it, and either way it is judged as it is.
    """
    try:
        text = path_below_prefix.encode("latin-1").decode("utf-8")
    except UnicodeError as exc:
        raise InvalidRequest("destination is not valid UTF-8") from exc
    segments = text.split("/")
    for segment in segments:
        _check_segment(segment)
    if segments[0].casefold() == STATE_DIR_NAME.casefold():
        raise InvalidRequest(f"{STATE_DIR_NAME} is reserved")
    return "/".join(segments)


def _check_segment(segment: str) -> None:
    if segment in ("", ".", ".."):
        raise InvalidRequest(f"invalid path segment {segment!r}")
    for char in segment:
        if char in _FORBIDDEN_CHARS or unicodedata.category(char) == "Cc":
            raise InvalidRequest(f"forbidden character {char!r} in destination")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InvalidRequest(f"path segment longer than {MAX_SEGMENT_BYTES} bytes")
    if segment.split(".", 1)[0].rstrip(" ").upper() in _DEVICE_NAMES:
        raise InvalidRequest(f"Windows device name {segment!r} as destination")


def reply_location(session_id: str) -> str:
    """The reply's URL path below the upload directory's prefix (braces percent-encoded)."""
    return f"{_REPLIES_BELOW_PREFIX}%7B{session_id}%7D/{REPLY_NAME}"


def reply_session(path_below_prefix: str) -> str | None:
    """The raw session id a GET below the prefix asks the reply of: ``None`` if the path is not
    under the replies at all, ``""`` if it is there but names no reply file."""
    if not path_below_prefix.lower().startswith(_REPLIES_BELOW_PREFIX.lower()):
        return None
    session_part, _, name = path_below_prefix[len(_REPLIES_BELOW_PREFIX) :].partition("/")
    return session_part if name == REPLY_NAME else ""


def state_dir(root: Path) -> Path:
    return root / STATE_DIR_NAME


def resolve_destination(root: Path, key: str) -> Path:
    """The destination's absolute path, after checking it against the filesystem as it is now.

    Raises 400 if symlinks lead outside the root or into the state area, if the destination is an
    existing directory, or if something on the way is not a directory. Creates nothing.
    """
    return _resolve(real_root_of(root), key)


#: An upload root's real path, by the root as configured, with the identity (device, inode) of
#: the directory it named: a Create and a commit each resolve the root, and ``realpath`` costs an
#: ``lstat`` and some Python per component of it (about 25 µs for a root three folders deep).
_REAL_ROOTS: dict[str, tuple[tuple[int, int], str]] = {}
_REAL_ROOTS_KEPT = 256


def real_root_of(root: str | os.PathLike[str]) -> str:
    """``os.path.realpath(root)``, computed again only when ``root`` names another directory
    than it did (one ``stat`` instead of one ``lstat`` per component): an operator who points
    the root's path, or a folder above it, elsewhere is followed at the next packet."""
    configured = os.fspath(root)
    try:
        seen = os.stat(configured)
    except OSError:
        return os.path.realpath(configured)  # not there yet: nothing to remember
    identity = (seen.st_dev, seen.st_ino)
    known = _REAL_ROOTS.get(configured)
    if known is not None and known[0] == identity:
        return known[1]
    real = os.path.realpath(configured)
    try:
        resolved = os.stat(real)
    except OSError:
        return real
    if (resolved.st_dev, resolved.st_ino) == identity:  # not swapped between the two looks
        if len(_REAL_ROOTS) >= _REAL_ROOTS_KEPT:
            _REAL_ROOTS.clear()
        _REAL_ROOTS[configured] = (identity, real)
    return real


def _resolve(real_root: str, key: str) -> Path:
    segments = key.split("/")
    if segments[0].casefold() != STATE_DIR_NAME.casefold():
        plain = _resolve_without_links(real_root, segments)
        if plain is not None:
            return plain
    return _resolve_through_links(Path(real_root), segments)


def _resolve_without_links(real_root: str, segments: list[str]) -> Path | None:
    """The common case, one ``lstat`` per existing segment below the root: ``None`` as soon as
    a symlink is met, for :func:`_resolve_through_links` to judge."""
    current = real_root.rstrip("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        path = f"{current}/{segment}"
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return Path(real_root, *segments)  # nothing below is there: no link either
        except NotADirectoryError:
            raise InvalidRequest("destination path runs through a file") from None
        if stat.S_ISLNK(mode):
            return None
        if index == last:
            if stat.S_ISDIR(mode):
                raise InvalidRequest("destination is a directory")
        elif not stat.S_ISDIR(mode):
            raise InvalidRequest("destination path runs through a file")
        current = path
    return Path(current)


def _resolve_through_links(real_root: Path, segments: list[str]) -> Path:
    try:
        candidate = Path(os.path.realpath(real_root.joinpath(*segments)))
    except OSError as exc:  # a link swapped for a folder while it was being read (EINVAL)
        raise InvalidRequest("the destination's path changed while it was checked") from exc
    if not candidate.is_relative_to(real_root) or candidate == real_root:
        raise InvalidRequest("destination resolves outside the upload root")
    if candidate.is_relative_to(Path(os.path.realpath(state_dir(real_root)))):
        raise InvalidRequest("destination resolves into the state area")
    if candidate.is_dir():
        raise InvalidRequest("destination is a directory")
    ancestor = candidate.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidRequest("destination path runs through a file")
    return candidate


@contextlib.contextmanager
def open_destination_parent(root: Path, key: str) -> Iterator[tuple[int, str]]:
    """The destination's folder as a directory descriptor, and the file's name in it.

    The path is checked as :func:`resolve_destination` does, then walked again from the root
    one folder at a time, never following a link and creating what is missing. A folder
    swapped for a symlink after the check (``renameat2(RENAME_EXCHANGE)`` by a local user) is
    an error, not a way out of the root: the commit links into the very folder that was walked.
    """
    real_root = real_root_of(root)
    resolved = _resolve(real_root, key)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(real_root, flags)
    except FileNotFoundError:  # the operator's root, made when first needed
        os.makedirs(real_root, exist_ok=True)
        fd = os.open(real_root, flags)
    try:
        for segment in resolved.parent.relative_to(real_root).parts:
            child = _open_child_dir(fd, segment)
            os.close(fd)
            fd = child
        yield fd, resolved.name
    finally:
        os.close(fd)


def _open_child_dir(parent: int, name: str) -> int:
    """Open (creating if missing) the folder ``name`` below ``parent``, never through a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent)
            return os.open(name, flags, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidRequest("the destination's folder changed during the commit") from exc
        raise


def prepare_destination(root: Path, key: str) -> Path:
    """Resolve, create missing parent directories (only inside the root), and resolve again.

    The second resolution catches a symlink planted between the first check and the commit.
    """
    path = resolve_destination(root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return resolve_destination(root, key)


@dataclass(frozen=True)
class Destination:
    """Where a session's upload is committed: a checked key below an upload directory's root.

    Backends that publish files resolve it below ``root``; object stores name their object after
    ``key`` and ignore ``root``.
    """

    root: Path
    key: str

    def resolve(self) -> Path:
        return resolve_destination(self.root, self.key)

    def prepare(self) -> Path:
        return prepare_destination(self.root, self.key)

    def open_parent(self) -> AbstractContextManager[tuple[int, str]]:
        """(folder descriptor, file name) to publish into: see :func:`open_destination_parent`."""
        return open_destination_parent(self.root, self.key)
