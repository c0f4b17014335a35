"""Peak worker RSS of `bits-wsgi serve` while uploads grow: it must stay flat.

    .venv/bin/python benchmarks/memory_flat.py [--sizes-mib 64 256 1024] [--fragment-mib 13]

Starts `bits-wsgi serve` (one worker of its default engine) on a free loopback port in a
temporary directory, uploads each size in 13 MiB fragments with a raw http.client BITS client,
checks the sha256 of every committed file, and prints the worker's peak RSS (VmHWM) after each
upload.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def upload(port: int, name: str, total: int, fragment: int, block: bytes) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(headers: dict[str, str], body: bytes = b"") -> http.client.HTTPResponse:
        sent = {"Content-Length": str(len(body)), **headers}
        connection.request("BITS_POST", f"/{name}", body=body, headers=sent)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status} {response.headers}")
        return response

    created = post({"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL})
    session = created.headers["BITS-Session-Id"]
    digest = hashlib.sha256()
    for first in range(0, total, fragment):
        chunk = block[: min(fragment, total - first)]
        digest.update(chunk)
        post(
            {
                "BITS-Packet-Type": "Fragment",
                "BITS-Session-Id": session,
                "Content-Range": f"bytes {first}-{first + len(chunk) - 1}/{total}",
            },
            chunk,
        )
    post({"BITS-Packet-Type": "Close-Session", "BITS-Session-Id": session})
    connection.close()
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--fragment-mib", type=int, default=13)
    args = parser.parse_args()
    fragment = args.fragment_mib * MiB
    block = os.urandom(fragment)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        port = free_port()
        command = [sys.executable, "-m", "bits_wsgi", "serve", str(root), "--port", str(port)]
        server = subprocess.Popen(
            [*command, "--workers", "1", "--threads", "2", "--log-level", "warning"],
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            (worker,) = children(server.pid)
            print(f"worker {worker}: peak RSS at start {peak_rss_kib(worker) / 1024:.1f} MiB")
            print("| upload | fragments | peak worker RSS after | sha256 ok |")
            print("|---|---|---|---|")
            for size in args.sizes_mib:
                total = size * MiB
                name = f"u{size}.bin"
                expected = upload(port, name, total, fragment, block)
                ok = file_sha256(root / name) == expected
                print(
                    f"| {size} MiB | {-(-total // fragment)} x {args.fragment_mib} MiB "
                    f"| {peak_rss_kib(worker) / 1024:.1f} MiB | {ok} |"
                )
                (root / name).unlink()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)


if __name__ == "__main__":
    main()
