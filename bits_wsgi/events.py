"""Hooks the host application registers to hear about sessions (beyond IIS).

::

    bits = BITSMiddleware(app.wsgi_app, "/srv/uploads")

    @bits.events.on_upload_complete
    def index(event):
        catalogue.add(event.path, event.sha256, owner=event.owner)

Hooks run in the request's thread, under the session's lock, after the session's new state is
stored and before the Ack is sent: keep them quick, or hand the event to a queue. An exception in
a hook is logged and changes nothing: the session and its Ack are as they would be without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("bits_wsgi")

EventKind = Literal[
    "session_created",
    "fragment",
    "upload_complete",
    "session_closed",
    "session_cancelled",
    "session_expired",
]
KINDS: tuple[EventKind, ...] = (
    "session_created",
    "fragment",
    "upload_complete",
    "session_closed",
    "session_cancelled",
    "session_expired",
)


@dataclass(frozen=True, kw_only=True)
class SessionEvent:
    kind: EventKind
    session_id: str
    owner: str
    #: the destination below the upload directory's root, ``/``-separated
    destination: str
    #: the upload directory's URL prefix
    prefix: str
    received: int
    total: int | None
    #: upload_complete: the committed file, or None when nothing was committed (yet)
    path: Path | None = None
    #: upload_complete: hex sha256 of the whole upload
    sha256: str | None = None


Hook = Callable[[SessionEvent], object]


class Events:
    """A registry of hooks per event kind; each ``on_*`` method is also a decorator."""

    def __init__(self) -> None:
        self._hooks: dict[EventKind, list[Hook]] = {kind: [] for kind in KINDS}

    def register(self, kind: EventKind, hook: Hook) -> Hook:
        self._hooks[kind].append(hook)
        return hook

    def on_session_created(self, hook: Hook) -> Hook:
        return self.register("session_created", hook)

    def on_fragment(self, hook: Hook) -> Hook:
        return self.register("fragment", hook)

    def on_upload_complete(self, hook: Hook) -> Hook:
        return self.register("upload_complete", hook)

    def on_session_closed(self, hook: Hook) -> Hook:
        return self.register("session_closed", hook)

    def on_session_cancelled(self, hook: Hook) -> Hook:
        return self.register("session_cancelled", hook)

    def on_session_expired(self, hook: Hook) -> Hook:
        return self.register("session_expired", hook)

    def wants(self, kind: EventKind) -> bool:
        return bool(self._hooks[kind])

    def emit(self, event: SessionEvent) -> None:
        for hook in self._hooks[event.kind]:
            try:
                hook(event)
            except Exception:
                log.exception("hook %r failed on %s of %s", hook, event.kind, event.session_id)
