"""Upload bytes in S3-compatible object storage: the blob store of a farm without a shared disk.

::

    from bits_wsgi.backends.redis import RedisBackend
    from bits_wsgi.backends.s3 import S3Store

    backend = RedisBackend(S3Store("bits-uploads", prefix="fleet/"), url="redis://redis:6379/0")

boto3 is imported only when no client is passed (``pip install 'bits-wsgi[s3]'``); it finds
credentials, region and endpoint (``AWS_ENDPOINT_URL``) the usual way. A ready client can be
injected with ``client=``.

Each session is one S3 multipart upload, started at Create-Session for the destination's own key
(``prefix + destination``), so the commit is ``CompleteMultipartUpload``: no byte is copied, and
without overwrites the completion itself is the atomic check (``If-None-Match: *``). Objects
below ``prefix + "BITS-Sessions/Requests/{ID}/"`` hold the session's working state::

    upload.json            the multipart upload's key and id (written once)
    tail-{START:020d}      the bytes after the last uploaded part: BITS fragments are often
                           smaller than S3's 5 MiB minimum part, so they are staged here until
                           a whole part is full

Every part but the last is exactly ``part_size`` bytes. The data's length (the session's offset)
is the size of the contiguous uploaded parts plus the tail that starts where they end; a tail
that starts anywhere else is left over from a crash and counts for nothing. Each step of a write
(a part uploaded, then the new tail stored, then the old one deleted) leaves that sum equal to
bytes S3 holds durably, so the offset never runs ahead of them.

A fragment is spooled to a local temporary file before anything is sent, so a client that
disconnects mid-body changes nothing in S3. A session cancelled, closed or expired aborts its
multipart upload; a host killed between starting an upload and recording it can leave an
orphan, which the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule removes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..errors import BackendUnavailable, DestinationExists
from ..paths import STATE_DIR_NAME, Destination

#: S3's smallest part (but the last) and its largest number of parts.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
#: 8 MiB parts allow uploads of up to 78 GiB; raise ``part_size`` for more.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
SESSION_METADATA = "bits-session"
#: Sessions whose multipart upload id this process remembers.
UPLOAD_CACHE_SIZE = 4096
_TAIL = "tail-"


@dataclass(frozen=True)
class _Upload:
    key: str
    upload_id: str


@dataclass(frozen=True)
class _State:
    """What S3 holds of a session: its parts and the tail objects present."""

    parts: list[dict[str, Any]]
    uploaded: int  # bytes in the contiguous parts
    tails: dict[str, int]  # tail key -> size

    @property
    def tail_size(self) -> int:
        return self.tails.get(_tail_name(self.uploaded), 0)

    @property
    def size(self) -> int:
        return self.uploaded + self.tail_size


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        part_size: int = DEFAULT_PART_SIZE,
        spool_dir: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's minimum part)")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.spool_dir = spool_dir
        # Upload ids never change and session ids are never reused: safe to keep, a bounded
        # number of them (a process lives through millions of sessions).
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()

    # -- names --------------------------------------------------------------------------------

    def _session_prefix(self, session_id: str) -> str:
        return f"{self.prefix}{STATE_DIR_NAME}/Requests/{{{session_id}}}/"

    def _manifest_key(self, session_id: str) -> str:
        return self._session_prefix(session_id) + "upload.json"

    def object_key(self, destination_key: str) -> str:
        """The S3 key a destination is committed to."""
        return self.prefix + destination_key

    # -- the blob store -----------------------------------------------------------------------

    def create_data(self, session_id: str, destination_key: str) -> None:
        key = self.object_key(destination_key)
        with _unavailable():
            started = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata={SESSION_METADATA: session_id}
            )
            upload = _Upload(key, started["UploadId"])
            manifest = {"key": upload.key, "upload_id": upload.upload_id}
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._manifest_key(session_id),
                Body=json.dumps(manifest).encode("utf-8"),
            )
        self._remember(session_id, upload)

    def _remember(self, session_id: str, upload: _Upload) -> None:
        self._uploads[session_id] = upload
        self._uploads.move_to_end(session_id)
        while len(self._uploads) > UPLOAD_CACHE_SIZE:
            self._uploads.popitem(last=False)

    def data_size(self, session_id: str) -> int | None:
        state = self._state(session_id)
        if state is not None:
            return state.size
        # Completed: the committed object is the data (a crash between the completion and the
        # record's save must not make the session look short of bytes).
        upload = self._upload(session_id)
        head = None if upload is None else self._head(upload.key)
        if head is not None and _session_of(head) == session_id:
            return int(head["ContentLength"])
        return None

    def write(self, session_id: str, offset: int, chunks: Iterable[bytes]) -> int:
        upload = self._upload(session_id)
        state = self._state(session_id)
        if upload is None or state is None:
            raise FileNotFoundError(f"data of session {session_id} is gone")
        if not state.uploaded <= offset <= state.size:
            # The server writes at the offset it derived from this size, under the lock.
            raise OSError(errno.EINVAL, f"offset {offset} outside {state.uploaded}..{state.size}")
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            kept = offset - state.uploaded  # tail bytes before the offset stay
            if kept:
                self._read_tail(session_id, state.uploaded, kept, spool)
            written = 0
            try:
                for chunk in chunks:
                    spool.write(chunk)
                    written += len(chunk)
            except BaseException:
                if offset < state.size:  # cut the stray tail bytes, as the contract says
                    spool.seek(0)
                    self._store_tail(session_id, state, state.uploaded, spool.read(kept))
                raise
            spool.seek(0)
            self._send(session_id, upload, state, spool, kept + written)
        return written

    def _send(
        self, session_id: str, upload: _Upload, state: _State, spool: IO[bytes], length: int
    ) -> None:
        """Upload the spool's whole parts, then store the rest as the new tail."""
        start = state.uploaded
        number = len(state.parts) + 1
        while length - (start - state.uploaded) >= self.part_size:
            if number > MAX_PARTS:
                raise OSError(errno.EFBIG, f"upload exceeds {MAX_PARTS} parts of {self.part_size}")
            body = spool.read(self.part_size)
            with _unavailable():
                self.client.upload_part(
                    Bucket=self.bucket,
                    Key=upload.key,
                    UploadId=upload.upload_id,
                    PartNumber=number,
                    Body=body,
                )
            number += 1
            start += self.part_size
        self._store_tail(session_id, state, start, spool.read())

    def _store_tail(self, session_id: str, state: _State, start: int, data: bytes) -> None:
        """Make ``data`` the tail at ``start``, then delete every other tail object."""
        name = _tail_name(start)
        with _unavailable():
            if data:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._session_prefix(session_id) + name, Body=data
                )
            stale = [t for t in state.tails if t != name or not data]
            for tail in stale:
                self.client.delete_object(
                    Bucket=self.bucket, Key=self._session_prefix(session_id) + tail
                )

    def _read_tail(self, session_id: str, start: int, length: int, into: IO[bytes]) -> None:
        with _unavailable():
            got = self.client.get_object(
                Bucket=self.bucket,
                Key=self._session_prefix(session_id) + _tail_name(start),
                Range=f"bytes=0-{length - 1}",
            )
            shutil.copyfileobj(got["Body"], into, 1024 * 1024)

    def sync(self, session_id: str) -> None:
        """Nothing to do: S3 holds a part or an object durably once it has answered."""

    # -- commit -------------------------------------------------------------------------------

    def destination_exists(self, destination: Destination) -> bool:
        return self._head(self.object_key(destination.key)) is not None

    def commit(self, session_id: str, destination: Destination, *, overwrite: bool) -> None:
        upload = self._upload(session_id)
        if upload is None:
            raise FileNotFoundError(f"data of session {session_id} is gone")
        if upload.key != self.object_key(destination.key):
            raise ValueError(f"session {session_id} was started for {upload.key}")
        state = self._state(session_id)
        if state is None:
            # Completed already (commits are idempotent), or aborted.
            head = self._head(upload.key)
            if head is not None and _session_of(head) == session_id:
                return
            raise FileNotFoundError(f"data of session {session_id} is gone")
        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in state.parts]
        conditional = {} if overwrite else {"IfNoneMatch": "*"}
        with _unavailable(), _destination_taken(self, upload.key, session_id):
            if state.tail_size:
                # The tail becomes the last part, which S3 lets be of any size.
                copied = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=upload.key,
                    UploadId=upload.upload_id,
                    PartNumber=len(parts) + 1,
                    CopySource={
                        "Bucket": self.bucket,
                        "Key": self._session_prefix(session_id) + _tail_name(state.uploaded),
                    },
                )
                parts.append(
                    {"PartNumber": len(parts) + 1, "ETag": copied["CopyPartResult"]["ETag"]}
                )
            if not parts:
                # An empty upload: S3 completes no upload without a part.
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=upload.key,
                    Body=b"",
                    Metadata={SESSION_METADATA: session_id},
                    **conditional,
                )
                self._abort(upload)
                return
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                MultipartUpload={"Parts": parts},
                **conditional,
            )

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata, or None if there is no object at ``key``."""
        with _unavailable():
            try:
                head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                if _status(exc) == 404:
                    return None
                raise
        return head

    # -- removal ------------------------------------------------------------------------------

    def discard_data(self, session_id: str) -> None:
        upload = self._upload(session_id)
        if upload is not None:
            self._abort(upload)
        with _unavailable():
            for key in self._session_objects(session_id):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_data(self, session_id: str) -> None:
        self.discard_data(session_id)
        self._uploads.pop(session_id, None)

    def _abort(self, upload: _Upload) -> None:
        with _unavailable():
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
                )
            except Exception as exc:
                if _status(exc) != 404:  # NoSuchUpload: completed or aborted already
                    raise

    # -- reading S3's state -------------------------------------------------------------------

    def _upload(self, session_id: str) -> _Upload | None:
        upload = self._uploads.get(session_id)
        if upload is not None:
            return upload
        with _unavailable():
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=self._manifest_key(session_id))
            except Exception as exc:
                if _status(exc) == 404:
                    return None
                raise
            manifest = json.loads(got["Body"].read())
        upload = _Upload(str(manifest["key"]), str(manifest["upload_id"]))
        self._remember(session_id, upload)
        return upload

    def _state(self, session_id: str) -> _State | None:
        """Parts and tails, or None if the data is gone (discarded, aborted or completed)."""
        upload = self._upload(session_id)
        if upload is None:
            return None
        parts: list[dict[str, Any]] = []
        with _unavailable():
            try:
                for page in self._pages("list_parts", Key=upload.key, UploadId=upload.upload_id):
                    parts.extend(page.get("Parts", []))
            except Exception as exc:
                if _status(exc) == 404:
                    return None
                raise
            tails = {
                item["Key"].rsplit("/", 1)[1]: int(item["Size"])
                for page in self._pages(
                    "list_objects_v2", Prefix=self._session_prefix(session_id) + _TAIL
                )
                for item in page.get("Contents", [])
            }
        contiguous: list[dict[str, Any]] = []
        for part in sorted(parts, key=lambda p: int(p["PartNumber"])):
            if int(part["PartNumber"]) != len(contiguous) + 1:
                break
            contiguous.append(part)
        uploaded = sum(int(p["Size"]) for p in contiguous)
        return _State(contiguous, uploaded, tails)

    def _pages(self, operation: str, **arguments: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator(operation)
        yield from paginator.paginate(Bucket=self.bucket, **arguments)

    def _session_objects(self, session_id: str) -> list[str]:
        return [
            item["Key"]
            for page in self._pages("list_objects_v2", Prefix=self._session_prefix(session_id))
            for item in page.get("Contents", [])
        ]


def _session_of(head: dict[str, Any]) -> str:
    """The session that committed an object ("" if none of ours did)."""
    metadata: dict[str, str] = head.get("Metadata", {})
    return metadata.get(SESSION_METADATA, "")


def _tail_name(start: int) -> str:
    return f"{_TAIL}{start:020d}"


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


@contextlib.contextmanager
def _destination_taken(store: S3Store, key: str, session_id: str) -> Iterator[None]:
    """A failed ``If-None-Match`` is someone else's object, unless it is this session's own."""
    try:
        yield
    except Exception as exc:
        if _status(exc) == 412:
            head = store._head(key)
            if head is not None and _session_of(head) == session_id:
                return
            raise DestinationExists(key) from None
        raise


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """S3 unreachable or overloaded (5xx) is transient for the client (503); other errors
    (access denied, no such bucket) are the operator's to fix and propagate."""
    try:
        yield
    except Exception as exc:
        module = type(exc).__module__
        if module.startswith(("botocore", "urllib3")):
            status = _status(exc)
            if status is None or status >= 500:
                raise BackendUnavailable(f"s3: {exc}") from exc
        raise
