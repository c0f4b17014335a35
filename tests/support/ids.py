"""Session ids as the tests read them from Acks."""

from __future__ import annotations

from bits_wsgi.protocol import SessionId


def key_of(raw: str | None) -> str | None:
    """The storage key of a session id an Ack carried, None if it is none."""
    parsed = SessionId.parse(raw or "")
    return None if parsed is None else parsed.key
