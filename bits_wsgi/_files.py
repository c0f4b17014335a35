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


def publish(source: Path, folder: int, name: str, *, overwrite: bool, tag: str) -> None:
    """Make ``name`` in the directory ``folder`` (a descriptor) the file ``source``, in one
    atomic step, idempotently.

    A hard link shares the already-fsynced inode, so no byte is copied. Without overwrites the
    link itself is the atomic check-and-create (:class:`DestinationExists`). Across filesystems
    the data is first copied next to the destination. A destination that already is ``source``
    counts as done. Everything happens relative to ``folder``, so a path swapped meanwhile
    cannot redirect it; the staging name does not grow with ``name``, so every name that fits
    the filesystem can be committed.
    """
    if _same_file(source, folder, name):
        return
    if not overwrite:
        try:
            os.link(source, name, dst_dir_fd=folder)  # the atomic check-and-create
        except FileExistsError:
            raise DestinationExists(name) from None
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        else:
            os.fsync(folder)
            return
    staged = f".{tag}.bits-tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged, dir_fd=folder)
    try:
        try:
            os.link(source, staged, dst_dir_fd=folder)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_durably(source, folder, staged)
        if overwrite:
            os.replace(staged, name, src_dir_fd=folder, dst_dir_fd=folder)
        else:
            try:
                os.link(staged, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except FileExistsError:
                if not _same_file(_stat_in(folder, staged), folder, name):
                    raise DestinationExists(name) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged, dir_fd=folder)
    os.fsync(folder)


def _copy_durably(source: Path, folder: int, name: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    target = os.open(name, flags, 0o644, dir_fd=folder)
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())


def _stat_in(folder: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _same_file(source: Path | os.stat_result | None, folder: int, name: str) -> bool:
    """Whether ``name`` in ``folder`` is the file ``source`` (a path, or its stat)."""
    if source is None:
        return False
    try:
        known = os.stat(source) if isinstance(source, Path) else source
    except FileNotFoundError:
        return False
    there = _stat_in(folder, name)
    return there is not None and (there.st_dev, there.st_ino) == (known.st_dev, known.st_ino)
