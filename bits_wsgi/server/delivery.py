"""Delivery of completion events from the outbox to the webhooks: at least once, signed, with
backoff and jitter, a dead letter after ``max_attempts``.

One daemon thread per outbox and process (started in a worker when it handles a request, as
the sweeper is), woken at once when this process records an event and otherwise every
``POLL_INTERVAL``; ``bits-wsgi deliver`` runs the same loop in the foreground. Any number of
deliverers may run on one outbox, in processes or hosts: each event is claimed for a lease
longer than its POSTs can take, so two never send it at the same time.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from urllib.parse import urlsplit

from ..backends.base import Outbox, OutboxEntry
from ..webhooks import (
    EVENT_ID_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Webhooks,
    signature,
)
from .per_process import PerProcess

log = logging.getLogger("bits_wsgi.delivery")

#: Seconds between looks at the outbox when nothing woke the deliverer.
POLL_INTERVAL = 5.0
#: Events delivered in one pass, each claimed on its own: a claim's lease covers one event, so
#: what a killed deliverer had claimed is due again soon after.
BATCH = 16
#: Seconds between prunes of settled events.
PRUNE_INTERVAL = 3600.0
#: Bytes of a receiver's answer kept in the event's last error.
ERROR_TEXT = 200

Post = Callable[[str, bytes, dict[str, str], float], int]


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body``; the status, or an ``OSError`` when no answer came."""
    parts = urlsplit(url)
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)
        return response.status
    except http.client.HTTPException as exc:
        raise OSError(f"not an HTTP answer: {exc!r}") from exc
    finally:
        connection.close()


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        webhooks: Webhooks,
        *,
        clock: Callable[[], float] = time.time,
        send: Post = post,
    ) -> None:
        self.outbox = outbox
        self.webhooks = webhooks
        self._clock = clock
        self._send = send
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = PerProcess()
        self._pruned = 0.0

    @property
    def lease(self) -> float:
        """Long enough for one event to time out at every URL."""
        return len(self.webhooks.urls) * self.webhooks.timeout + 15.0

    # -- one pass ------------------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Deliver what is due now; how many events were tried."""
        now = self._clock()
        if now - self._pruned >= PRUNE_INTERVAL:
            self._pruned = now
            gone = self.outbox.prune(now - self.webhooks.retention)
            if gone:
                log.info("outbox: %d settled events pruned", gone)
        tried = 0
        while tried < BATCH:
            claimed = self.outbox.claim(self._clock(), self.lease, 1)
            if not claimed:
                break
            self._deliver(claimed[0])
            tried += 1
        return tried

    def _deliver(self, entry: OutboxEntry) -> None:
        delivered = list(entry.delivered_to)
        errors: list[str] = []
        for url in self.webhooks.urls:
            if url in delivered:
                continue
            error = self._send_one(entry, url)
            if error is None:
                delivered.append(url)
            else:
                errors.append(f"{url}: {error}")
        now = self._clock()
        if not errors:
            self.outbox.settle(entry, "delivered", now, delivered_to=tuple(delivered))
            log.info("event %s delivered (attempt %d)", entry.id, entry.attempts)
            return
        error = "; ".join(errors)
        if entry.attempts >= self.webhooks.max_attempts:
            self.outbox.settle(entry, "dead", now, error=error, delivered_to=tuple(delivered))
            log.error(
                "event %s is a dead letter after %d attempts: %s", entry.id, entry.attempts, error
            )
            return
        delay = self.retry_delay(entry.attempts)
        self.outbox.settle(
            entry, "pending", now + delay, error=error, delivered_to=tuple(delivered)
        )
        log.warning(
            "event %s: attempt %d of %d failed (%s); next in %.0f s",
            entry.id,
            entry.attempts,
            self.webhooks.max_attempts,
            error,
            delay,
        )

    def retry_delay(self, attempts: int) -> float:
        """Exponential, capped, with half of it random: a farm's retries after an outage of
        the receiver spread out instead of arriving together."""
        ceiling = min(self.webhooks.max_delay, self.webhooks.first_delay * 2.0 ** (attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _send_one(self, entry: OutboxEntry, url: str) -> str | None:
        """None when the receiver took the event, else why not."""
        timestamp = int(self._clock())
        event = _event_fields(entry)
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: entry.id,
            IDEMPOTENCY_HEADER: event.get("idempotency_key", entry.id),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(self.webhooks.secret, timestamp, entry.body),
        }
        try:
            status = self._send(url, entry.body, headers, self.webhooks.timeout)
        except OSError as exc:
            return f"no answer ({exc})"[:ERROR_TEXT]
        if 200 <= status < 300:
            return None
        return f"answered {status}"

    # -- the thread ----------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the thread in this process unless it runs here already (a cheap check)."""
        self._thread.ensure(self._start)

    def _start(self) -> None:
        loop = (weakref.ref(self), self._wake, self._stopped)
        threading.Thread(target=_run, args=loop, name="bits-wsgi-deliver", daemon=True).start()

    def wake(self) -> None:
        self._wake.set()

    def run_forever(self, stop: threading.Event) -> None:
        """``bits-wsgi deliver``: the loop in this thread until ``stop`` is set."""
        while not stop.is_set():
            self._pass_logged()
            stop.wait(POLL_INTERVAL)

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _pass_logged(self) -> int:
        try:
            return self.deliver_due()
        except Exception:
            log.exception("event delivery failed")
            return 0


def _event_fields(entry: OutboxEntry) -> dict[str, str]:
    try:
        fields = json.loads(entry.body)
    except ValueError:
        return {}
    return (
        {k: v for k, v in fields.items() if isinstance(v, str)} if isinstance(fields, dict) else {}
    )


def _run(
    deliverer: weakref.ref[Deliverer], wake: threading.Event, stopped: threading.Event
) -> None:
    while not stopped.is_set():
        alive = deliverer()
        if alive is None:
            return  # the server is gone
        wake.clear()  # before the pass: an event recorded during it wakes the next wait
        busy = alive._pass_logged() >= BATCH
        del alive
        if not busy:
            wake.wait(POLL_INTERVAL)
