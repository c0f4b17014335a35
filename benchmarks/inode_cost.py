"""What creating a file costs on this machine, folder by folder: the noise under small uploads.

    .venv/bin/python -m benchmarks.inode_cost [--dir /tmp] [--folders 4] [--files 400]

Makes a few fresh folders below ``--dir`` and creates empty files in each, printing the CPU
time per file and the folder's inode number. On ext4 the cost of allocating an inode depends
on the block group the folder landed in (and on what was recently deleted there): on the
machine of docs/benchmarks.md it ranged from 15 µs to 0.8 ms, which moves any comparison of
small uploads whose servers create their files in different folders.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inode_cost")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--folders", type=int, default=4)
    parser.add_argument("--files", type=int, default=400)
    args = parser.parse_args()
    for _ in range(args.folders):
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            began = time.process_time()
            for number in range(args.files):
                os.close(os.open(f"{folder}/{number}", os.O_WRONLY | os.O_CREAT, 0o644))
            cost = (time.process_time() - began) / args.files * 1e6
            inode = os.stat(folder).st_ino
            print(f"{folder} (inode {inode}): {cost:.0f} µs of CPU per new file")


if __name__ == "__main__":
    main()
