"""Completion webhooks: the settings, the event's body, and its signature (plain values and
rules; the delivery runs in ``server.delivery``).

Each event is a JSON object, POSTed to every configured URL with these headers::

    Content-Type: application/json
    BITS-Event-Id: {5A3F0E1C-...}            the session's id: one completion per session
    Idempotency-Key: 5A3F0E1C-....<sha256>   the session id and the upload's sha256
    BITS-Timestamp: 1764662400               when this delivery was signed (Unix seconds)
    BITS-Signature: v1=<hex>                 HMAC-SHA256(secret, timestamp + "." + body)

A receiver checks the signature over the body exactly as received, refuses timestamps far from
its clock (replays), and treats a repeated ``Idempotency-Key`` as done: delivery is at least
once, so a receiver may see an event again (after a timeout whose answer was lost, or a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

SIGNATURE_HEADER = "BITS-Signature"
TIMESTAMP_HEADER = "BITS-Timestamp"
EVENT_ID_HEADER = "BITS-Event-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: A receiver's default tolerance for the signed time (the verify() default).
TIMESTAMP_TOLERANCE = 300
#: Shorter secrets are refused: the HMAC is only as strong as its key.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True, kw_only=True)
class Webhooks:
    """Where completion events go and how hard delivery tries.

    ``deliver=False`` records events without delivering them in the server's processes, for
    deployments that run ``bits-wsgi deliver`` beside their application instead.
    """

    urls: tuple[str, ...]
    secret: bytes
    #: deliveries tried before the event becomes a dead letter
    max_attempts: int = 12
    #: the first retry's delay, doubled after each failure (with jitter) up to ``max_delay``
    first_delay: float = 10.0
    max_delay: float = 3600.0
    #: seconds for one POST, connection included
    timeout: float = 10.0
    #: how long delivered and dead events stay listed
    retention: float = 14 * 86_400.0
    deliver: bool = True

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("webhooks need at least one URL")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"webhook URL must be http:// or https://: {url!r}")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the webhook secret needs at least {MIN_SECRET_BYTES} bytes")
        if self.max_attempts < 1 or self.timeout <= 0 or self.first_delay <= 0:
            raise ValueError("max_attempts, timeout and first_delay must be positive")


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``BITS-Signature`` value for ``body`` sent at ``timestamp``."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return "v1=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature_value: str,
    *,
    now: float,
    tolerance: float = TIMESTAMP_TOLERANCE,
) -> bool:
    """Whether a received event is authentic and recent (for receivers written in Python)."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), signature_value)


def idempotency_key(session_key: str, sha256: str | None) -> str:
    return f"{session_key}.{sha256 or 'unknown'}"


def completion_body(event: dict[str, object]) -> bytes:
    """The event's JSON, as stored and signed: keys sorted, no whitespace, UTF-8."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode("utf-8")
