"""Completion events: recorded in the outbox before the final Ack, delivered to a real local
receiver, signed, retried with backoff, dead-lettered, listed and replayed."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bits_wsgi import UploadDirectory, UploadServer
from bits_wsgi.backends import FilesystemBackend, MemoryBackend
from bits_wsgi.cli import main
from bits_wsgi.server.delivery import Deliverer
from bits_wsgi.webhooks import Webhooks, verify

from .support.clock import Clock
from .support.ports import free_port
from .support.server_client import ServerClient
from .support.webhook_receiver import Receiver, signed_by

SECRET = b"0123456789abcdef-test-secret"
DATA = b"crash dump " * 300


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def webhooks(*urls: str, **options: object) -> Webhooks:
    return Webhooks(urls=urls, secret=SECRET, **options)  # type: ignore[arg-type]


def server_with(
    upload_dir: Path, hooks: Webhooks, clock: Callable[[], float] = time.time, **options: object
) -> UploadServer:
    directory = UploadDirectory(upload_dir=upload_dir, **options)  # type: ignore[arg-type]
    return UploadServer(
        directory,
        FilesystemBackend(upload_dir),
        sweep_interval=None,
        webhooks=hooks,
        clock=clock,
    )


def test_each_committed_upload_is_delivered_once_signed(
    upload_dir: Path, receiver: Receiver
) -> None:
    server = server_with(upload_dir, webhooks(receiver.url))
    try:
        sessions = []
        for name in ("a.dmp", "b.dmp"):
            client = ServerClient(server, path=f"/{name}", user="HOST1$")
            client.upload(DATA, fragment_size=1000)
            sessions.append(client.session_id)
        deliveries = receiver.wait_for(2)
    finally:
        server.close()
    assert (upload_dir / "a.dmp").read_bytes() == DATA
    events = {json.loads(d.body)["id"]: (d, json.loads(d.body)) for d in deliveries}
    assert sorted(events) == sorted(sessions)
    digest = hashlib.sha256(DATA).hexdigest()
    for session_id, (delivery, event) in events.items():
        assert signed_by(SECRET, delivery)
        assert delivery.headers["Content-Type"] == "application/json"
        assert delivery.headers["BITS-Event-Id"] == session_id
        key = session_id.strip("{}")
        assert delivery.headers["Idempotency-Key"] == f"{key}.{digest}"
        assert event["type"] == "upload_complete"
        assert (event["owner"], event["size"], event["sha256"]) == ("HOST1$", len(DATA), digest)
        assert event["published"] is True
        assert Path(event["path"]).read_bytes() == DATA
    assert {e["destination"] for _, e in events.values()} == {"a.dmp", "b.dmp"}
    assert len(receiver.deliveries) == 2  # and nothing more arrives for them


def test_the_package_verifier_refuses_a_changed_body_or_an_old_timestamp(
    upload_dir: Path, receiver: Receiver
) -> None:
    server = server_with(upload_dir, webhooks(receiver.url))
    try:
        ServerClient(server, path="/a.dmp").upload(DATA)
        (delivery,) = receiver.wait_for(1)
    finally:
        server.close()
    stamp, mac = delivery.headers["BITS-Timestamp"], delivery.headers["BITS-Signature"]
    assert verify(SECRET, delivery.body, stamp, mac, now=int(stamp) + 10)
    assert not verify(SECRET, delivery.body + b" ", stamp, mac, now=int(stamp))
    assert not verify(b"another secret of 16+ bytes", delivery.body, stamp, mac, now=int(stamp))
    assert not verify(SECRET, delivery.body, stamp, mac, now=int(stamp) + 3600)


def test_the_event_is_in_the_outbox_before_the_final_ack(upload_dir: Path) -> None:
    """Nothing delivers here: what the final Ack announces is already stored durably."""
    hooks = webhooks("http://127.0.0.1:9/", deliver=False)
    server = server_with(upload_dir, hooks)
    client = ServerClient(server, path="/a.dmp")
    client.upload(DATA)
    outbox = FilesystemBackend(upload_dir).outbox  # another connection, as after a restart
    assert outbox is not None
    (entry,) = outbox.entries()
    assert (entry.id, entry.state, entry.attempts) == (client.session_id, "pending", 0)
    # The final fragment again (its Ack was lost): the same event, not a second one.
    assert client.fragment(DATA[-1000:], len(DATA) - 1000, len(DATA)).status_int == 200
    assert [e.id for e in outbox.entries()] == [client.session_id]


def test_with_commit_on_close_the_event_waits_for_the_close(upload_dir: Path) -> None:
    hooks = webhooks("http://127.0.0.1:9/", deliver=False)
    server = server_with(upload_dir, hooks, commit_on="close")
    client = ServerClient(server, path="/a.dmp")
    client.upload(DATA)
    backend_outbox = server.backend.outbox
    assert backend_outbox is not None and backend_outbox.entries() == []
    assert client.close().status_int == 200
    (entry,) = backend_outbox.entries()
    event = json.loads(entry.body)
    assert event["published"] and event["sha256"] == hashlib.sha256(DATA).hexdigest()


def test_a_cancelled_upload_sends_no_event(upload_dir: Path) -> None:
    server = server_with(upload_dir, webhooks("http://127.0.0.1:9/", deliver=False))
    client = ServerClient(server, path="/a.dmp")
    assert client.create().status_int == 200
    assert client.fragment(DATA[:1000], 0, len(DATA)).status_int == 200
    assert client.cancel().status_int == 200
    assert server.backend.outbox is not None and server.backend.outbox.entries() == []


def test_a_receiver_down_for_a_while_gets_the_event_when_it_returns(upload_dir: Path) -> None:
    clock = Clock()
    receiver = Receiver()  # not started: its port refuses connections
    hooks = webhooks(receiver.url, deliver=False, first_delay=10.0, max_delay=60.0)
    server = server_with(upload_dir, hooks, clock=clock)
    ServerClient(server, path="/a.dmp").upload(DATA)
    assert server.backend.outbox is not None
    deliverer = Deliverer(server.backend.outbox, hooks, clock=clock)
    delays = []
    for _ in range(5):
        assert deliverer.deliver_due() == 1
        (entry,) = server.backend.outbox.entries()
        assert entry.state == "pending" and "no answer" in entry.last_error
        delays.append(entry.when - clock.now)
        assert deliverer.deliver_due() == 0  # not due yet
        clock.now = entry.when
    # Backoff: doubling from 10 s, capped at 60 s, each with up to half of it random.
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 10.0 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    receiver.start()
    try:
        assert deliverer.deliver_due() == 1
        (delivery,) = receiver.wait_for(1)
    finally:
        receiver.stop()
    (entry,) = server.backend.outbox.entries()
    assert (entry.state, entry.attempts) == ("delivered", 6)
    assert json.loads(delivery.body)["destination"] == "a.dmp"


def test_an_event_is_retried_only_at_the_urls_that_did_not_take_it(
    upload_dir: Path, receiver: Receiver
) -> None:
    clock = Clock()
    failing = Receiver().start()
    failing.status = 503
    try:
        hooks = webhooks(receiver.url, failing.url, deliver=False)
        server = server_with(upload_dir, hooks, clock=clock)
        ServerClient(server, path="/a.dmp").upload(DATA)
        assert server.backend.outbox is not None
        deliverer = Deliverer(server.backend.outbox, hooks, clock=clock)
        deliverer.deliver_due()
        (entry,) = server.backend.outbox.entries()
        assert entry.delivered_to == (receiver.url,)
        assert entry.last_error == f"{failing.url}: answered 503"
        failing.status = 200
        clock.now = entry.when
        deliverer.deliver_due()
        assert len(receiver.wait_for(1)) == 1 and len(failing.wait_for(1)) == 1
    finally:
        failing.stop()
    (entry,) = server.backend.outbox.entries()
    assert entry.state == "delivered"


def test_dead_letters_are_listed_and_replayed_by_the_cli(
    upload_dir: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    clock = Clock()
    receiver.status = 500
    hooks = webhooks(receiver.url, deliver=False, max_attempts=2)
    server = server_with(upload_dir, hooks, clock=clock)
    client = ServerClient(server, path="/a.dmp")
    client.upload(DATA)
    assert server.backend.outbox is not None
    deliverer = Deliverer(server.backend.outbox, hooks, clock=clock)
    deliverer.deliver_due()
    clock.now += 3600
    deliverer.deliver_due()
    (entry,) = server.backend.outbox.entries()
    assert (entry.state, entry.attempts, entry.last_error) == (
        "dead",
        2,
        f"{receiver.url}: answered 500",
    )
    assert main(["events", str(upload_dir), "--failed"]) == 0
    table = capsys.readouterr().out
    assert client.session_id in table and "dead" in table and "answered 500" in table
    assert main(["events", str(upload_dir), "--failed", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["id"] == client.session_id and row["event"]["destination"] == "a.dmp"

    receiver.status = 200
    bare = str(client.session_id).strip("{}").lower()  # as typed without quoting the braces
    assert main(["events", str(upload_dir), "replay", bare]) == 0
    capsys.readouterr()
    assert main(["events", str(upload_dir), "--failed"]) == 0
    assert client.session_id not in capsys.readouterr().out
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    command = ["deliver", str(upload_dir), "--webhook", receiver.url]
    assert main([*command, "--webhook-secret-file", str(secret), "--once"]) == 0
    (delivery,) = receiver.wait_for(1)
    assert signed_by(SECRET, delivery)
    assert main(["events", str(upload_dir), "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["state"] == "delivered"


def test_replaying_an_unknown_event_says_so(
    upload_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    FilesystemBackend(upload_dir)
    assert main(["events", str(upload_dir), "replay", "{nope}"]) == 2
    assert "no event '{nope}'" in capsys.readouterr().err


def test_two_deliverers_on_one_outbox_send_each_event_once(
    upload_dir: Path, receiver: Receiver
) -> None:
    hooks = webhooks(receiver.url, deliver=False)
    server = server_with(upload_dir, hooks)
    for index in range(40):
        ServerClient(server, path=f"/{index}.dmp").upload(DATA[:100], fragment_size=100)
    outboxes = [FilesystemBackend(upload_dir).outbox for _ in range(2)]  # two processes' views
    start = threading.Barrier(2)

    def drain(outbox: object) -> None:
        deliverer = Deliverer(outbox, hooks)  # type: ignore[arg-type]
        start.wait()
        while deliverer.deliver_due():
            pass

    threads = [threading.Thread(target=drain, args=(outbox,)) for outbox in outboxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = [json.loads(d.body)["id"] for d in receiver.wait_for(40)]
    assert len(ids) == len(set(ids)) == 40


def test_webhook_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        webhooks("ftp://example.invalid/")
    with pytest.raises(ValueError, match="16 bytes"):
        Webhooks(urls=("http://127.0.0.1/",), secret=b"short")
    with pytest.raises(ValueError, match="at least one URL"):
        Webhooks(urls=(), secret=SECRET)


def test_a_backend_without_an_outbox_is_refused(upload_dir: Path) -> None:
    backend = MemoryBackend()
    backend.outbox = None
    with pytest.raises(ValueError, match="outbox"):
        UploadServer(
            UploadDirectory(upload_dir=upload_dir),
            backend,
            sweep_interval=None,
            webhooks=webhooks(f"http://127.0.0.1:{free_port()}/"),
        )


def test_settled_events_are_pruned_after_the_retention(
    upload_dir: Path, receiver: Receiver
) -> None:
    """Delivered and dead events stay listed for ``retention``, then go: the outbox does not
    grow with every upload ever made (pending ones stay until delivered)."""
    clock = Clock()
    hooks = webhooks(receiver.url, deliver=False, retention=3600.0)
    server = server_with(upload_dir, hooks, clock=clock)
    ServerClient(server, path="/a.dmp").upload(DATA)
    outbox = server.backend.outbox
    assert outbox is not None
    deliverer = Deliverer(outbox, hooks, clock=clock)
    deliverer.deliver_due()
    assert [e.state for e in outbox.entries()] == ["delivered"]
    clock.now += 1800
    ServerClient(server, path="/b.dmp").upload(DATA)  # pending, its receiver answers later
    receiver.status = 500
    deliverer.deliver_due()
    clock.now += 3600 + 1  # past the retention of the first, and a prune is due again
    deliverer.deliver_due()
    assert [json.loads(e.body)["destination"] for e in outbox.entries()] == ["b.dmp"]
