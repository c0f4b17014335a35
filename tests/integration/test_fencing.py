"""Fencing across hosts (PROTOCOL.md §10.1, D23), for real: two `bits-wsgi serve` hosts share a
redis-server and a blob store; host A stalls (SIGSTOP) with half a fragment written, longer
than its lock lease. The client sends the whole fragment to host B, which completes, commits
and closes the upload. Then A wakes up: its connection drops (A cuts back), or the rest of its
body arrives, with other bytes. Neither may change the committed file, and A answers 503.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import RawBits, start_serve
from .test_farm import S3Bucket, SharedDirectory

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture(params=["shared-directory", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "s3":
        bucket = S3Bucket(tmp_path, request.getfixturevalue("s3_endpoint"))
        bucket.crash = []  # no worker crashes here
        return bucket
    return SharedDirectory(tmp_path)


def wait_for_packet_line(log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if "packet=Fragment" in line]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise TimeoutError(f"no Fragment line in {log}")


@pytest.mark.parametrize("wakes_to", ["dropped-connection", "rest-of-body"])
def test_a_paused_host_cannot_touch_a_committed_upload(
    tmp_path: Path, redis_url: str, blobs: Any, wakes_to: str
) -> None:
    arguments = ["--backend", redis_url, *blobs.arguments]
    logs = [tmp_path / "host-a.log", tmp_path / "host-b.log"]
    # gunicorn: the scenario needs a server that hands the body to the application while it
    # arrives (A writes the first half, then stalls). waitress hands over whole bodies, so a
    # paused host there holds a lease only while it copies a spooled body: the same fencing,
    # which this timing cannot reach.
    host_a, host_b = (
        start_serve(blobs.uploads, log, *arguments, env=blobs.environment, server="gunicorn")
        for log in logs
    )
    try:
        data = os.urandom(3 * MiB)
        total = len(data)
        via_b = RawBits(host_b.port, "/farm/dump.bin")
        assert via_b.create().status == 200
        via_a = RawBits(host_a.port, "/farm/dump.bin")
        via_a.session_id = via_b.session_id

        via_a.start_fragment(data, 0, total, send=total // 2)
        time.sleep(0.5)  # A is writing the first half
        host_a.signal(signal.SIGSTOP)  # a paused VM, a stalled process
        try:
            # The client retries the whole fragment on B, which waits out A's lease
            response = via_b.fragment(data, 0, total)
            assert response.status == 200, response.headers
            assert response.headers["BITS-Received-Content-Range"] == str(total)
            assert hashlib.sha256(blobs.committed()).digest() == hashlib.sha256(data).digest()
            assert via_b.close().status == 200
        finally:
            host_a.signal(signal.SIGCONT)

        if wakes_to == "dropped-connection":
            via_a.connection.close()  # A reads a short body and cuts back what it wrote
            wait_for_packet_line(logs[0])
        else:
            via_a.connection.send(b"\0" * (total - total // 2))  # other bytes than the file's
            answer = via_a.connection.getresponse()
            answer.read()
            assert answer.status == 503  # A lost its lease: it changed nothing
            assert answer.headers["BITS-Error-Code"] == "0x801901F7"
    finally:
        host_a.stop()
        host_b.stop()
    assert hashlib.sha256(blobs.committed()).digest() == hashlib.sha256(data).digest()
    commits = sum(log.read_text().count("complete, committed") for log in logs)
    assert commits == 1
