"""Downloading an upload-reply's reply (PROTOCOL.md §7.5), resumable and bounded."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import Transient, UploadError, raise_if_final

#: The largest reply the client downloads.
MAX_REPLY_SIZE = 1024 * 1024 * 1024


@dataclass(kw_only=True)
class ReplyDownload:
    retries: int = 8
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 60.0
    max_reply_size: int = MAX_REPLY_SIZE
    sleep: Callable[[float], None] = time.sleep
    #: for https replies: the upload's own TLS settings
    tls: ssl.SSLContext | None = None

    def fetch(self, url: str, target: Path, authorization: str | None) -> None:
        """GET the reply into ``target``, resuming with a Range after a broken connection.

        A partial file is resumed only with ``If-Range`` and the ETag the server gave for it
        (kept beside it), so bytes of another reply never join this one; without a proof of the
        same entity the download starts over. ``authorization`` goes with every request, or none.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UploadError(f"the server named an invalid reply URL {url[:200]!r}")

        def connect() -> http.client.HTTPConnection:
            if parts.scheme == "https":
                return http.client.HTTPSConnection(
                    parts.netloc, timeout=self.timeout, context=self.tls
                )
            return http.client.HTTPConnection(parts.netloc, timeout=self.timeout)

        path = urlunsplit(("", "", parts.path, parts.query, ""))
        partial = target.with_name(target.name + ".part")
        proof = target.with_name(target.name + ".part.etag")
        etag = _read_proof(proof, url)
        if etag is None:
            _remove(partial)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            have = partial.stat().st_size if partial.exists() else 0
            headers = {"Range": f"bytes={have}-", "If-Range": etag} if have and etag else {}
            if authorization:
                headers["Authorization"] = authorization
            connection = connect()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                resumed = response.status == 206 and _starts_at(response, have)
                if response.status == 416 or (response.status == 206 and not resumed):
                    response.read()  # not "done": the stored part is not this reply's
                    _remove(partial)
                    etag = None
                    raise Transient(f"reply download answered {response.status}, starting over")
                if response.status != 200 and not resumed:
                    raise UploadError(f"reply download failed: {response.status}")
                etag = response.getheader("ETag")
                _write_proof(proof, url, etag)
                self._receive(response, partial, have if resumed else 0)
                break
            except (Transient, OSError, http.client.HTTPException) as exc:
                raise_if_final(exc)
                if attempt == self.retries:
                    raise UploadError(f"reply download failed: {exc}") from exc
                self.sleep(min(self.max_backoff, delay))
                delay *= 2
            finally:
                connection.close()
        os.replace(partial, target)
        _remove(proof)

    def _receive(self, response: http.client.HTTPResponse, partial: Path, have: int) -> None:
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and have + int(length) > self.max_reply_size:
            raise UploadError(f"the reply is larger than {self.max_reply_size} bytes")
        size = have
        with open(partial, "ab" if have else "wb") as out:
            while block := response.read(1024 * 1024):
                size += len(block)
                if size > self.max_reply_size:
                    raise UploadError(f"the reply is larger than {self.max_reply_size} bytes")
                out.write(block)


def _starts_at(response: http.client.HTTPResponse, offset: int) -> bool:
    """Whether a 206 continues the partial file: its range starts where the file ends."""
    content_range = response.getheader("Content-Range") or ""
    unit, _, rest = content_range.partition(" ")
    start = rest.partition("-")[0]
    return unit == "bytes" and start.isascii() and start.isdigit() and int(start) == offset


def _read_proof(proof: Path, url: str) -> str | None:
    """The ETag of the partial reply, if it was saved for this very URL."""
    try:
        saved = json.loads(proof.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("url") != url:
        return None
    etag = saved.get("etag")
    return etag if isinstance(etag, str) and etag else None


def _write_proof(proof: Path, url: str, etag: str | None) -> None:
    if etag is None:
        _remove(proof)
        return
    proof.write_text(json.dumps({"url": url, "etag": etag}))


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
