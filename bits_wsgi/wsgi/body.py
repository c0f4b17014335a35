"""A request body read in bounded chunks, with every byte counted.

WSGI servers disagree on what a short body looks like (``b""`` early, ``OSError``, a Werkzeug
``ClientDisconnected``), and some never raise at all, so the count is ours (PROTOCOL.md §11).
Memory per request is one chunk, whatever the fragment or upload size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from werkzeug.exceptions import ClientDisconnected

from ..errors import ShortBody

#: Reads of 1 MiB keep per-request memory small and syscalls few (PROTOCOL.md §4.3: 64 KiB–1 MiB).
CHUNK_SIZE = 1024 * 1024
#: An unused body is drained up to this much by default (see ``UploadDirectory.discard_limit``).
DISCARD_LIMIT = 64 * 1024


class BodyReader:
    def __init__(
        self, read: Callable[[int], bytes], length: int, *, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self._read = read
        self.remaining = length
        self._chunk_size = chunk_size

    def chunks(self, count: int) -> Iterator[bytes]:
        """Exactly ``count`` bytes, in chunks; :class:`ShortBody` if the client stops early."""
        if count > self.remaining:
            raise ShortBody(f"wanted {count} bytes, {self.remaining} left")
        while count > 0:
            try:
                data = self._read(min(count, self._chunk_size))
            except (OSError, ValueError, ClientDisconnected) as exc:
                raise ShortBody(str(exc)) from exc
            if not data:
                raise ShortBody(f"body ended with {self.remaining} bytes missing")
            if len(data) > count:  # a read() that ignores its size argument
                raise ShortBody("body stream returned more than asked for")
            count -= len(data)
            self.remaining -= len(data)
            yield data

    def skip(self, count: int) -> None:
        for _ in self.chunks(count):
            pass

    def discard(self, limit: int = DISCARD_LIMIT) -> None:
        """Drain what is left, up to ``limit`` bytes; a short or failing body is no error here."""
        try:
            self.skip(min(self.remaining, limit))
        except ShortBody:
            self.remaining = 0
