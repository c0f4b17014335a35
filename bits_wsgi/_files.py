"""Small durable-file operations shared by the backends: atomic replace and atomic publish."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from .errors import DestinationExists


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool) -> None:
    """Temp file, fsync, rename (PROTOCOL.md §10.2): the old content or the new, never half.

    ``durable`` also fsyncs the directory, so the rename itself survives a power loss.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def publish(source: Path, destination: Path, *, overwrite: bool, tag: str) -> None:
    """Make ``destination`` the file ``source``, in one atomic step, idempotently.

    A hard link shares the already-fsynced inode, so no byte is copied. Without overwrites the
    link itself is the atomic check-and-create (:class:`DestinationExists`). Across filesystems
    the data is first copied next to the destination. A destination that already is ``source``
    counts as done.
    """
    if _same_file(source, destination):
        return
    if not overwrite:
        try:
            os.link(source, destination)  # the atomic check-and-create, no staging needed
        except FileExistsError:
            raise DestinationExists(str(destination)) from None
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            fsync_dir(destination.parent)
            return
    staged = destination.with_name(f".{destination.name}.{tag}.bits-tmp")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    try:
        os.link(source, staged)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_durably(source, staged)
    try:
        if overwrite:
            os.replace(staged, destination)
        else:
            try:
                os.link(staged, destination)
            except FileExistsError:
                if not _same_file(staged, destination):
                    raise DestinationExists(str(destination)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    fsync_dir(destination.parent)


def _copy_durably(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False
