"""A farm: three `bits-wsgi serve --backend redis://… --data-dir SHARED` hosts on loopback.

The client sends each fragment to another host; one host is SIGKILLed while a fragment streams
through it; two hosts receive the same fragment at once. The upload must finish byte-identical,
no Ack may claim more bytes than the shared data holds, and the commit must happen once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from .helpers import RawBits, Server, start_serve

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def test_three_hosts_one_upload(tmp_path: Path, redis_url: str) -> None:
    uploads, shared = tmp_path / "uploads", tmp_path / "shared"
    backend = ["--backend", redis_url, "--data-dir", str(shared)]
    hosts: list[Server] = [
        start_serve(uploads, tmp_path / f"host{n}.log", *backend) for n in range(3)
    ]
    try:
        data = os.urandom(20 * MiB + 4321)
        total = len(data)
        clients = [RawBits(host.port, "/farm/dump.bin") for host in hosts]
        assert clients[0].create().status == 200
        session = clients[0].session_id
        for client in clients:
            client.session_id = session
        data_file = shared / "Requests" / session / "requestfile.bin"

        def send(client: RawBits, first: int) -> int:
            response = client.fragment(data[first : first + MiB], first, total)
            assert response.status in (200, 416), response.headers
            received = int(response.headers["BITS-Received-Content-Range"])
            # the offset never runs ahead of the bytes
            assert data_file.stat().st_size >= received or received == total
            return received

        offset, turn = 0, 0
        while offset < 8 * MiB:  # round-robin over the hosts
            offset = send(clients[turn % 3], offset)
            turn += 1

        # host 1 dies with half a fragment on the wire
        clients[1].start_fragment(data[offset : offset + MiB], offset, total, send=MiB // 2)
        time.sleep(0.3)
        hosts[1].kill()
        # host 2 takes over as soon as the dead host's lock expires (its TTL, seconds)
        began = time.monotonic()
        offset = send(clients[2], offset)
        assert time.monotonic() - began < 25

        live = [clients[0], clients[2]]
        last = total - (total - 1) % MiB - 1  # where the final fragment starts
        turn = 0
        while offset < last:
            offset = send(live[turn % 2], offset)
            turn += 1

        # two hosts receive the final fragment at once: one completes and commits, the other
        # waits for the session's lock and replays the stored final Ack
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda c=client: results.append(send(c, offset)))
            for client in live
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [total, total]
        assert clients[0].close().status == 200
        assert clients[2].close().status == 200  # the tombstone is shared
    finally:
        for number, host in enumerate(hosts):
            if number != 1:
                host.stop()
    stored = uploads / "farm" / "dump.bin"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    commits = sum(
        (tmp_path / f"host{n}.log").read_text().count("complete, committed") for n in range(3)
    )
    assert commits == 1
