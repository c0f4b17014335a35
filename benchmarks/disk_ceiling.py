"""The raw disk's ceiling for an upload, with and without the fsync a durable server owes.

    .venv/bin/python -m benchmarks.disk_ceiling [--dir /tmp] [--rounds 3]

Writes the payload of each throughput scenario of ``benchmarks.run`` (the same sizes and chunk
sizes) straight to a file with ``os.pwrite`` from one process, no HTTP and no server: once
leaving it in the page cache, as the peer design does, and once fsyncing it before the end, as
PROTOCOL.md §10.2 requires of every conforming server (plus, for small uploads, the link into
place and the folder's fsync). Rounds alternate; medians are printed. No server can be faster
than its column here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
#: (name, bytes per upload, chunk, uploads in a row): the scenarios of benchmarks.run.
SCENARIOS = [
    ("256 MiB, 1 MiB chunks", 256 * MiB, MiB, 1),
    ("64 MiB, 64 KiB chunks", 64 * MiB, 64 * 1024, 1),
    ("2000 x 4 KiB files", 4096, 4096, 2000),
]


def upload(folder: Path, size: int, chunk: int, count: int, *, durable: bool) -> float:
    """Seconds to write ``count`` files of ``size`` bytes in ``chunk``-byte writes."""
    data = os.urandom(chunk)
    began = time.perf_counter()
    for number in range(count):
        staged = folder / f"staged-{number}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for offset in range(0, size, chunk):
                os.pwrite(fd, data[: min(chunk, size - offset)], offset)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable:  # published as §10.2 asks: a link, and the folder's fsync
            os.link(staged, folder / f"file-{number}")
            directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            staged.unlink()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.disk_ceiling")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name, size, chunk, count in SCENARIOS:
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for durable in (False, True):
                with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
                    runs[durable].append(upload(Path(scratch), size, chunk, count, durable=durable))
        cached, synced = (statistics.median(runs[d]) for d in (False, True))
        if count == 1:
            print(
                f"{name}: page cache {size / cached / 1e6:.0f} MB/s,"
                f" durable {size / synced / 1e6:.0f} MB/s ({cached / synced:.2f})"
            )
        else:
            print(
                f"{name}: page cache {count / cached:.0f} files/s,"
                f" durable {count / synced:.0f} files/s ({cached / synced:.2f})"
            )


if __name__ == "__main__":
    main()
