"""Bytes per identity per UTC day: what the client sees at Create and at each Fragment, on the
next day, for an upload larger than the quota, for anonymous clients, and on the status page
and in metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import webtest

from bits_wsgi import BITSMiddleware, UploadDirectory, UploadServer
from bits_wsgi.backends import FilesystemBackend, MemoryBackend
from bits_wsgi.wsgi.metrics import PrometheusMetrics

from .conftest import BitsClient, fallback_app
from .support.clock import Clock
from .support.server_client import AckResponse, ServerClient
from .test_operability import _metrics

QUOTA = 10_000
#: 2027-01-15 06:00 UTC: 18 hours left of the day
MORNING = 1_800_000_000.0 - 1_800_000_000.0 % 86_400 + 6 * 3600


def quota_server(upload_dir: Path, clock: Clock, **options: Any) -> UploadServer:
    directory = UploadDirectory(upload_dir=upload_dir, quota_bytes_per_day=QUOTA, **options)
    return UploadServer(directory, FilesystemBackend(upload_dir), clock=clock, sweep_interval=None)


def error(response: AckResponse) -> tuple[int, str | None, str | None]:
    return (
        response.status_int,
        response.headers.get("BITS-Error-Code"),
        response.headers.get("Retry-After"),
    )


def test_past_the_quota_fragments_wait_for_the_next_day(upload_dir: Path) -> None:
    clock = Clock(MORNING)
    server = quota_server(upload_dir, clock)
    first = ServerClient(server, path="/a.bin", user="HOST1$")
    first.upload(b"a" * 6_000, fragment_size=2_000)
    second = ServerClient(server, path="/b.bin", user="HOST1$")
    assert second.create().status_int == 200  # 4,000 bytes are left today
    assert second.fragment(b"b" * 4_000, 0, 6_000).status_int == 200
    waiting = second.fragment(b"b" * 2_000, 4_000, 6_000)
    # Transient: Windows retries after its retry delay, and resumes at the offset it holds.
    assert error(waiting) == (503, "0x801901F7", str(18 * 3600))
    assert waiting.headers["BITS-Received-Content-Range"] == "4000"
    third = ServerClient(server, path="/c.bin", user="HOST1$")
    assert error(third.create()) == (503, "0x801901F7", str(18 * 3600))
    # Another identity has its own day.
    ServerClient(server, path="/d.bin", user="HOST2$").upload(b"d" * 9_000)
    clock.now += 18 * 3600  # midnight UTC
    assert second.fragment(b"b" * 2_000, 4_000, 6_000).status_int == 200
    assert (upload_dir / "b.bin").read_bytes() == b"b" * 6_000
    assert server.quotas is not None and server.quotas.stored_today() == {"HOST1$": 2_000}


def test_an_upload_larger_than_the_quota_is_refused_as_too_large(upload_dir: Path) -> None:
    server = quota_server(upload_dir, Clock(MORNING))
    client = ServerClient(server, path="/huge.bin", user="HOST1$")
    assert client.create().status_int == 200
    refused = client.fragment(b"x" * 1_000, 0, QUOTA + 1)
    # Fatal: Windows reports it instead of retrying for its whole no-progress timeout.
    assert (refused.status_int, refused.headers.get("BITS-Error-Code")) == (500, "0x80200020")
    assert "Retry-After" not in refused.headers


def test_anonymous_clients_are_not_counted(upload_dir: Path) -> None:
    server = quota_server(upload_dir, Clock(MORNING))
    for index in range(3):
        ServerClient(server, path=f"/{index}.bin").upload(b"z" * 8_000)
    assert server.quotas is not None and server.quotas.stored_today() == {}


def test_a_fragment_that_breaks_off_gives_its_bytes_back(upload_dir: Path) -> None:
    server = quota_server(upload_dir, Clock(MORNING))
    client = ServerClient(server, path="/a.bin", user="HOST1$")
    assert client.create().status_int == 200
    headers = {"BITS-Session-Id": str(client.session_id), "Content-Range": "bytes 0-8999/10000"}
    short = client.post("Fragment", headers, b"x" * 5_000, content_length=9_000)
    assert short.status_int == 400  # the client went away after 5,000 of 9,000 bytes
    assert server.quotas is not None
    assert server.quotas.stored_today() == {"HOST1$": 0}
    assert client.fragment(b"x" * 10_000, 0, 10_000).status_int == 200
    assert server.quotas.stored_today() == {"HOST1$": 10_000}


def test_repeated_and_duplicate_bytes_are_counted_once(upload_dir: Path) -> None:
    server = quota_server(upload_dir, Clock(MORNING))
    client = ServerClient(server, path="/a.bin", user="HOST1$")
    assert client.create().status_int == 200
    assert client.fragment(b"x" * 4_000, 0, 8_000).status_int == 200
    assert client.fragment(b"x" * 4_000, 0, 8_000).status_int == 200  # a lost Ack, resent
    assert client.fragment(b"x" * 8_000, 0, 8_000).status_int == 200  # overlapping the held
    assert server.quotas is not None and server.quotas.stored_today() == {"HOST1$": 8_000}


def test_a_quota_needs_a_backend_that_counts(upload_dir: Path) -> None:
    backend = MemoryBackend()
    backend.usage = None
    directory = UploadDirectory(upload_dir=upload_dir, quota_bytes_per_day=QUOTA)
    with pytest.raises(ValueError, match="counts usage"):
        UploadServer(directory, backend, sweep_interval=None)


def test_the_status_page_and_metrics_show_who_reached_the_quota(upload_dir: Path) -> None:
    app = BITSMiddleware(
        fallback_app,
        upload_dir,
        quota_bytes_per_day=QUOTA,
        status_path="/bits-status/",
        metrics=PrometheusMetrics(),
        metrics_path="/-/metrics",
    )
    BitsClient(app, path="/a.bin", user="HOST1$").upload(b"a" * QUOTA, fragment_size=5_000)
    BitsClient(app, path="/b.bin", user="HOST2$").upload(b"b" * 3_000)
    status = webtest.TestApp(app).get(
        "/bits-status/",
        headers={"Accept": "application/json"},
        extra_environ={"REMOTE_ADDR": "127.0.0.1"},
    )
    (directory,) = status.json["directories"]
    assert directory["quota"] == {
        "bytes_per_day": QUOTA,
        "stored_today": {"HOST1$": QUOTA, "HOST2$": 3_000},
        "reached": ["HOST1$"],
    }
    page = webtest.TestApp(app).get("/bits-status/", extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    assert "quota reached: waits for tomorrow" in page.text
    samples = _metrics(app)
    assert samples["bits_quota_bytes_per_day{directory=/}"] == QUOTA
    assert samples["bits_quota_identities_reached{directory=/}"] == 1
