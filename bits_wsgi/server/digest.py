"""The sha256 of each upload, computed while its bytes stream in, for ``on_upload_complete``.

The running hash lives in this process only: when the next fragment lands in another worker (or
after a restart), :meth:`UploadDigests.sha256` reads the data once instead. The cache is bounded.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from ..backends.base import LocalFiles
from ..session import SessionRecord

#: Uploads in progress whose running sha256 a process keeps.
HASH_CACHE_SIZE = 256


class UploadDigests:
    def __init__(self, files: LocalFiles | None, size: int = HASH_CACHE_SIZE) -> None:
        self._files = files
        self._size = size
        self._hashes: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()
        self._guard = threading.Lock()

    def hashing(self, record: SessionRecord, chunks: Iterator[bytes]) -> Iterable[bytes]:
        """``chunks``, hashed on their way to the backend when the hash can continue here."""
        with self._guard:
            entry = self._hashes.pop(record.id, None)
        if entry is not None and entry[0] == record.received:
            hasher = entry[1]
        elif record.received == 0:
            hasher = hashlib.sha256()
        else:
            return chunks

        def hashed() -> Iterator[bytes]:
            count = record.received
            for chunk in chunks:
                hasher.update(chunk)
                count += len(chunk)
                yield chunk
            with self._guard:
                self._hashes[record.id] = (count, hasher)
                while len(self._hashes) > self._size:
                    self._hashes.popitem(last=False)

        return hashed()

    def forget(self, session_id: str) -> None:
        with self._guard:
            self._hashes.pop(session_id, None)

    def sha256(self, record: SessionRecord) -> str | None:
        """The upload's sha256: from the running hash, or read once from its data file."""
        with self._guard:
            entry = self._hashes.pop(record.id, None)
        if entry is not None and entry[0] == record.received:
            return entry[1].hexdigest()
        if record.received == 0:
            return hashlib.sha256().hexdigest()
        if self._files is None:
            return None
        try:
            with open(self._files.data_path(record.id), "rb") as data:
                return hashlib.file_digest(data, "sha256").hexdigest()
        except FileNotFoundError:
            return None
