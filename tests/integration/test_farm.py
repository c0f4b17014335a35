"""A farm: three `bits-wsgi serve --backend redis://… --data-dir SHARED` hosts on loopback,
with a shared directory and with S3 (a moto_server) as the blob store.

The client sends each fragment to another host; one host is SIGKILLed while a fragment streams
through it; two hosts receive the same fragment at once. The upload must finish byte-identical,
no Ack may claim more bytes than the blob store holds, and the commit must happen once.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..support.s3 import new_bucket, s3_client, s3_environment
from .helpers import RawBits, Server, start_serve

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


class SharedDirectory:
    def __init__(self, tmp_path: Path) -> None:
        self.uploads, self.shared = tmp_path / "uploads", tmp_path / "shared"
        self.arguments = ["--data-dir", str(self.shared)]
        self.environment: dict[str, str] = {}
        self.crash: list[str] = []

    def held(self, session: str) -> int:
        return (self.shared / "Requests" / session / "requestfile.bin").stat().st_size

    def committed(self) -> bytes:
        return (self.uploads / "farm" / "dump.bin").read_bytes()


class S3Bucket:
    """The bytes S3 holds are read straight from S3: the uploaded parts, plus the chain of
    staged chunks that continues them (bits_wsgi/backends/s3.py)."""

    def __init__(self, tmp_path: Path, endpoint: str) -> None:
        self.uploads = tmp_path / "uploads"
        self.client = s3_client(endpoint)
        self.bucket = new_bucket(endpoint)
        self.arguments = ["--data-dir", f"s3://{self.bucket}/fleet"]
        self.environment = s3_environment(endpoint)
        # One worker of the farm dies between uploading an S3 part and deleting the chunks
        # that went into it
        self.crash_marker = tmp_path / "crashed-after-part"
        self.crash = ["s3-after-part", str(self.crash_marker)]

    def held(self, session: str) -> int:
        (upload,) = self.client.list_multipart_uploads(Bucket=self.bucket)["Uploads"]
        parts = self.client.list_parts(
            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        ).get("Parts", [])
        held = sum(int(p["Size"]) for p in parts)
        prefix = f"fleet/BITS-Sessions/Requests/{session}/chunk-"
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        chunks = {
            int(o["Key"].rsplit("-", 1)[1]): int(o["Size"]) for o in listed.get("Contents", [])
        }
        while chunks.get(held):
            held += chunks[held]
        return held

    def committed(self) -> bytes:
        got = self.client.get_object(Bucket=self.bucket, Key="fleet/farm/dump.bin")
        data: bytes = got["Body"].read()
        return data


@pytest.fixture(params=["shared-directory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "s3":
        return S3Bucket(tmp_path, request.getfixturevalue("s3_endpoint"))
    return SharedDirectory(tmp_path)


def test_three_hosts_one_upload(tmp_path: Path, redis_url: str, store: Any) -> None:
    uploads = store.uploads
    backend = ["--backend", redis_url, *store.arguments]
    hosts: list[Server] = [
        start_serve(
            uploads, tmp_path / f"host{n}.log", *backend, env=store.environment, crash=store.crash
        )
        for n in range(3)
    ]
    try:
        data = os.urandom(20 * MiB + 4321)
        total = len(data)
        clients = [RawBits(host.port, "/farm/dump.bin") for host in hosts]
        assert clients[0].create().status == 200
        session = clients[0].session_id
        for client in clients:
            client.session_id = session
        held: Callable[[str], int] = store.held

        def send(client: RawBits, first: int) -> int:
            try:
                response = client.fragment(data[first : first + MiB], first, total)
            except (ConnectionError, http.client.HTTPException):
                # the worker died on it (the S3 crash point): retried on the next host
                assert store.crash and Path(store.crash[1]).exists()
                client.reconnect()
                return first
            assert response.status in (200, 416), response.headers
            received = int(response.headers["BITS-Received-Content-Range"])
            # the offset never runs ahead of the bytes
            assert received == total or held(session) >= received
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
        for host in hosts:  # host 1 too: an assertion may fail before it was killed
            host.stop()
    assert hashlib.sha256(store.committed()).digest() == hashlib.sha256(data).digest()
    commits = sum(
        (tmp_path / f"host{n}.log").read_text().count("complete, committed") for n in range(3)
    )
    assert commits == 1
    if store.crash:
        assert Path(store.crash[1]).exists()  # the crash point was reached
