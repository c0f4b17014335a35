"""Completion webhooks from real `bits-wsgi serve` processes to a real local receiver: exactly
once when all goes well, after a SIGKILL of the server, across a crash between the commit and
the event's record, and from a Redis farm of two hosts."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.webhook_receiver import Delivery, Receiver, signed_by
from .helpers import RawBits, Server, start_serve

pytestmark = pytest.mark.integration

SECRET = b"integration-secret-0123456789"
DATA = bytes(range(256)) * 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def webhook_arguments(tmp_path: Path, receiver: Receiver) -> list[str]:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    return ["--webhook", receiver.url, "--webhook-secret-file", str(secret)]


def upload(port: int, name: str, fragment: int = 10_000) -> str:
    client = RawBits(port, f"/{name}")
    assert client.create().status == 200
    assert client.upload_from(DATA, 0, fragment) == len(DATA)
    assert client.close().status == 200
    return client.session_id


def events_of(deliveries: list[Delivery]) -> dict[str, dict[str, object]]:
    events = {}
    for delivery in deliveries:
        assert signed_by(SECRET, delivery)
        event = json.loads(delivery.body)
        assert event["id"] not in events, f"{event['id']} delivered twice"
        events[event["id"]] = event
    return events


@contextlib.contextmanager
def serving(*args: object, **kwargs: object) -> Iterator[Server]:
    server = start_serve(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def test_serve_delivers_each_upload_once(tmp_path: Path, receiver: Receiver) -> None:
    root = tmp_path / "uploads"
    with serving(root, tmp_path / "serve.log", *webhook_arguments(tmp_path, receiver)) as server:
        sessions = [upload(server.port, f"dump{index}.bin") for index in range(3)]
        events = events_of(receiver.wait_for(3))
    assert sorted(events) == sorted(sessions)
    for event in events.values():
        assert Path(str(event["path"])).read_bytes() == DATA
    assert len(receiver.deliveries) == 3


def test_an_event_survives_a_sigkill_between_commit_and_delivery(tmp_path: Path) -> None:
    """The receiver is down while the upload completes; the server is then killed, and the
    event is delivered by the restarted server once the receiver is back."""
    receiver = Receiver()  # not listening yet
    root, log = tmp_path / "uploads", tmp_path / "serve.log"
    arguments = webhook_arguments(tmp_path, receiver)
    with serving(root, log, *arguments) as server:
        session = upload(server.port, "dump.bin")
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(30)
    assert (root / "dump.bin").read_bytes() == DATA
    receiver.start()
    try:
        with serving(root, log, *arguments):
            (delivery,) = receiver.wait_for(1, timeout=90)
        assert list(events_of([delivery])) == [session]
    finally:
        receiver.stop()


def test_a_worker_killed_after_the_commit_still_sends_the_event_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The worker dies after publishing and before the event is recorded: the client sends
    the final fragment again, the commit is found done, and the event is recorded then."""
    root, marker = tmp_path / "uploads", tmp_path / "crashed"
    with serving(
        root,
        tmp_path / "serve.log",
        *webhook_arguments(tmp_path, receiver),
        "--workers",
        "1",
        server="gunicorn",
        crash=("after-commit", str(marker)),
    ) as server:
        client = RawBits(server.port, "/dump.bin")
        assert client.create().status == 200
        last = 50_000  # fragments of 10,000 bytes up to here; the final one is the rest
        assert client.upload_from(DATA, 0, 10_000, until=last) == last
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            client.fragment(DATA[last:], last, len(DATA))
        assert marker.exists()
        client.reconnect()
        final = None
        for _ in range(100):  # until gunicorn's new worker answers
            with contextlib.suppress(http.client.HTTPException, ConnectionError):
                final = client.fragment(DATA[last:], last, len(DATA))
                break
            client.reconnect()
        assert final is not None and final.status == 200
        (delivery,) = receiver.wait_for(1)
        assert list(events_of([delivery])) == [client.session_id]
        client.reconnect()  # the server may have closed the idle keep-alive meanwhile
        assert client.close().status == 200
    assert (root / "dump.bin").read_bytes() == DATA
    assert len(receiver.deliveries) == 1


def test_a_redis_farm_of_two_hosts_delivers_each_event_once(
    tmp_path: Path, receiver: Receiver, redis_url: str
) -> None:
    root, shared = tmp_path / "uploads", tmp_path / "shared"
    farm = ["--backend", redis_url, "--data-dir", str(shared)]
    arguments = [*farm, *webhook_arguments(tmp_path, receiver)]
    with (
        serving(root, tmp_path / "host1.log", *arguments) as host1,
        serving(root, tmp_path / "host2.log", *arguments) as host2,
    ):
        sessions = [
            upload((host1, host2)[index % 2].port, f"farm{index}.bin") for index in range(8)
        ]
        events = events_of(receiver.wait_for(8))
        assert sorted(events) == sorted(sessions)
        # Both hosts keep delivering; nothing arrives twice.
        with pytest.raises(TimeoutError):
            receiver.wait_for(9, timeout=3)
    hosts = {event["host"] for event in events.values()}
    assert len(hosts) == 1  # both hosts run on this machine
