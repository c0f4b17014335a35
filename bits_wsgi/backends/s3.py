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
    chunk-{START:020d}     one staged fragment: BITS fragments are often smaller than S3's
                           5 MiB minimum part, so they wait here until a whole part is full

Every part but the last is exactly ``part_size`` bytes. The data's length (the session's offset)
is the size of the contiguous uploaded parts plus the *chain* of chunks that follows them: the
chunk starting where the parts end, the one starting where that one ends, and so on. A chunk off
the chain is left over from a crash and counts for nothing (the next write deletes it).

A fragment that does not fill a part is stored as one chunk (one PUT). One that does is joined
locally with the chain's chunks; its bytes past the last whole part are stored first, as the
chunk where those parts will end, then the parts are uploaded in order, then the chunks they
consumed are deleted. Each step leaves the offset at bytes S3 durably holds, and each byte
crosses the network at most three times (as a chunk, read back, in a part), not once per later
fragment.

A fragment is spooled to a local temporary file before anything is sent, so a client that
disconnects mid-body changes nothing in S3. A session cancelled, closed or expired aborts its
multipart upload; a host killed between starting an upload and recording it can leave an
orphan, which the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule removes.

Longer than 350 lines because one invariant runs through the whole module: the offset is the
contiguous parts plus the chain of chunks, and every write, cut, commit and abort keeps it; the
long docstring above says how, and splitting the steps would split that reasoning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..errors import BackendUnavailable, DestinationExists, InvalidRequest
from ..paths import STATE_DIR_NAME, Destination
from ..protocol import SessionId
from .base import LocalFiles

#: S3's smallest part (but the last) and its largest number of parts.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
#: S3's longest object key.
MAX_KEY_BYTES = 1024
#: 8 MiB parts allow uploads of up to 78 GiB; raise ``part_size`` for more.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
SESSION_METADATA = "bits-session"
_CHUNK = "chunk-"
#: Sessions whose multipart upload id this process remembers.
UPLOAD_CACHE_SIZE = 4096


@dataclass(frozen=True)
class _Upload:
    key: str
    upload_id: str


@dataclass(frozen=True)
class _State:
    """What S3 holds of a session: its contiguous parts and its staged chunks."""

    parts: list[dict[str, Any]]
    uploaded: int  # bytes in the contiguous parts
    chunks: dict[int, int]  # start offset -> size, every chunk object present

    @property
    def chain(self) -> list[tuple[int, int]]:
        """(start, size) of the chunks that continue the parts without a gap."""
        chain, position = [], self.uploaded
        while self.chunks.get(position):
            chain.append((position, self.chunks[position]))
            position += self.chunks[position]
        return chain

    @property
    def size(self) -> int:
        return self.uploaded + sum(size for _, size in self.chain)

    @property
    def garbage(self) -> list[int]:
        """Starts of chunks off the chain: left over from a crash, or consumed by a part."""
        on_chain = {start for start, _ in self.chain}
        return [start for start in self.chunks if start not in on_chain]


class S3Store:
    """A :class:`~bits_wsgi.backends.base.BlobStore` in a bucket; no files on this host."""

    files: LocalFiles | None = None

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        spool_dir: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's minimum part)")
        if client is not None and client_factory is not None:
            raise ValueError("pass client or client_factory, not both")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self._factory: Callable[[], Any] | None = None
        if client is None:
            self._factory = client_factory or _boto3_client
            client = self._factory()
        self._client = client
        self._client_pid = os.getpid()
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.spool_dir = spool_dir
        # Upload ids never change and session ids are never reused: safe to keep, a bounded
        # number of them (a process lives through millions of sessions).
        self._uploads: OrderedDict[str, _Upload] = OrderedDict()
        # What this thread read of the sessions whose lock it holds (see holding()).
        self._held = threading.local()

    @property
    def client(self) -> Any:
        """The S3 client. One the store made is made anew in a forked child (a WSGI server's
        worker): boto3 clients and their connections must not cross a fork. An injected client
        is the caller's to make after the fork (or pass ``client_factory``)."""
        if self._factory is not None and self._client_pid != os.getpid():
            self._client = self._factory()
            self._client_pid = os.getpid()
        return self._client

    @client.setter
    def client(self, client: Any) -> None:
        self._client, self._factory = client, None

    # -- names --------------------------------------------------------------------------------

    def _session_prefix(self, session_id: str) -> str:
        return f"{self.prefix}{STATE_DIR_NAME}/Requests/{SessionId(session_id).wire}/"

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

    @contextlib.contextmanager
    def holding(self, session_id: str) -> Iterator[None]:
        """While this thread holds the session's lock, nothing else changes what S3 holds of
        it: the parts and chunks listed to load the session serve its write too (one listing
        per fragment, not two). Each change made here drops what was kept."""
        held = self._held_states()
        held[session_id] = None
        try:
            yield
        finally:
            held.pop(session_id, None)

    def _held_states(self) -> dict[str, _State | None]:
        states: dict[str, _State | None] | None = getattr(self._held, "states", None)
        if states is None:
            states = self._held.states = {}
        return states

    def _changed(self, session_id: str) -> None:
        held = self._held_states()
        if session_id in held:
            held[session_id] = None

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

    def write(
        self,
        session_id: str,
        offset: int,
        chunks: Iterable[bytes],
        fence: Callable[[], None] | None = None,
    ) -> int:
        """``fence`` (lease-based locks) is called before every request that changes S3: a
        holder whose lease expired while it spooled or uploaded stops there."""
        check = fence if fence is not None else _no_fence
        upload = self._upload(session_id)
        state = self._state(session_id)
        if upload is None or state is None:
            raise FileNotFoundError(f"data of session {session_id} is gone")
        if not state.uploaded <= offset <= state.size:
            # The server writes at the offset it derived from this size, under the lock.
            raise OSError(errno.EINVAL, f"offset {offset} outside {state.uploaded}..{state.size}")
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            written = 0
            for chunk in chunks:  # a client gone mid-body raises here: S3 is untouched
                spool.write(chunk)
                written += len(chunk)
            check()
            self._changed(session_id)
            state = self._cut(session_id, state, offset)
            spool.seek(0)
            if offset - state.uploaded + written < self.part_size:
                if written:
                    check()
                    self._put_chunk(session_id, offset, spool.read())
            else:
                self._fill_parts(session_id, upload, state, spool, check)
        return written

    def rotate(self, session_id: str) -> None:
        """Nothing to do: no descriptor reaches S3 objects, and every request that changes them
        is fenced (see ``write``); a completed object never changes again."""

    def _cut(self, session_id: str, state: _State, offset: int) -> _State:
        """Delete the chunks off the chain, and cut the chain to ``offset``."""
        doomed = list(state.garbage)
        chain = state.chain
        for start, size in chain:
            if start >= offset:
                doomed.append(start)
            elif start + size > offset:  # cut inside this chunk: keep its head
                head = self._read_chunk(session_id, start, offset - start)
                self._put_chunk(session_id, start, head)
        self._delete_chunks(session_id, doomed)
        kept = {start: size for start, size in chain if start < offset}
        for start, size in kept.items():
            kept[start] = min(size, offset - start)
        return _State(state.parts, state.uploaded, kept)

    def _fill_parts(
        self,
        session_id: str,
        upload: _Upload,
        state: _State,
        spool: IO[bytes],
        check: Callable[[], None],
    ) -> None:
        """The chain and the new bytes make at least one whole part: store the rest as the chunk
        where the parts will end, upload the parts in order, then delete what they consumed."""
        with tempfile.TemporaryFile(dir=self.spool_dir) as joined:
            for start, size in state.chain:
                joined.write(self._read_chunk(session_id, start, size))
            shutil.copyfileobj(spool, joined, 1024 * 1024)
            length = joined.tell()
            whole = length // self.part_size * self.part_size
            if len(state.parts) + whole // self.part_size > MAX_PARTS:
                raise OSError(errno.EFBIG, f"upload exceeds {MAX_PARTS} parts of {self.part_size}")
            if length > whole:
                joined.seek(whole)
                check()
                self._put_chunk(session_id, state.uploaded + whole, joined.read())
            joined.seek(0)
            number = len(state.parts) + 1
            for _ in range(whole // self.part_size):
                check()
                self._upload_part(upload, number, joined.read(self.part_size))
                number += 1
        check()
        self._delete_chunks(session_id, [start for start, _ in state.chain])

    def _upload_part(self, upload: _Upload, number: int, body: bytes) -> None:
        with _unavailable():
            self.client.upload_part(
                Bucket=self.bucket,
                Key=upload.key,
                UploadId=upload.upload_id,
                PartNumber=number,
                Body=body,
            )

    def _chunk_key(self, session_id: str, start: int) -> str:
        return f"{self._session_prefix(session_id)}{_CHUNK}{start:020d}"

    def _put_chunk(self, session_id: str, start: int, data: bytes) -> None:
        with _unavailable():
            self.client.put_object(
                Bucket=self.bucket, Key=self._chunk_key(session_id, start), Body=data
            )

    def _read_chunk(self, session_id: str, start: int, length: int) -> bytes:
        with _unavailable():
            got = self.client.get_object(
                Bucket=self.bucket,
                Key=self._chunk_key(session_id, start),
                Range=f"bytes=0-{length - 1}",
            )
            data: bytes = got["Body"].read()
        return data

    def _delete_chunks(self, session_id: str, starts: Iterable[int]) -> None:
        with _unavailable():
            for start in starts:
                self.client.delete_object(
                    Bucket=self.bucket, Key=self._chunk_key(session_id, start)
                )

    def sync(self, session_id: str) -> None:
        """Nothing to do: S3 holds a part or an object durably once it has answered."""

    # -- commit -------------------------------------------------------------------------------

    def destination_exists(self, destination: Destination) -> bool:
        key = self.object_key(destination.key)
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            # Refused at Create: a name that S3 could never store must not start a session.
            raise InvalidRequest(f"destination key longer than {MAX_KEY_BYTES} bytes")
        return self._head(key) is not None

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
        self._changed(session_id)
        parts = [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in state.parts]
        conditional = {} if overwrite else {"IfNoneMatch": "*"}
        with _unavailable(), _destination_taken(self, upload.key, session_id):
            chain = state.chain
            if chain:
                # The chain becomes the last part, which S3 lets be of any size: copied
                # server-side when it is one chunk, joined here when it is several (< a part).
                number = len(parts) + 1
                if len(chain) == 1:
                    copied = self.client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=upload.key,
                        UploadId=upload.upload_id,
                        PartNumber=number,
                        CopySource={
                            "Bucket": self.bucket,
                            "Key": self._chunk_key(session_id, chain[0][0]),
                        },
                    )
                    etag = copied["CopyPartResult"]["ETag"]
                else:
                    body = b"".join(self._read_chunk(session_id, *link) for link in chain)
                    sent = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=upload.key,
                        UploadId=upload.upload_id,
                        PartNumber=number,
                        Body=body,
                    )
                    etag = sent["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
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
        self._changed(session_id)
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
        """Parts and chunks, or None if the data is gone (discarded, aborted or completed)."""
        held = self._held_states()
        kept = held.get(session_id)
        if kept is not None:
            return kept
        state = self._list_state(session_id)
        if session_id in held:
            held[session_id] = state
        return state

    def _list_state(self, session_id: str) -> _State | None:
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
            chunks = {
                int(item["Key"].rsplit(_CHUNK, 1)[1]): int(item["Size"])
                for page in self._pages(
                    "list_objects_v2", Prefix=self._session_prefix(session_id) + _CHUNK
                )
                for item in page.get("Contents", [])
            }
        contiguous: list[dict[str, Any]] = []
        for part in sorted(parts, key=lambda p: int(p["PartNumber"])):
            if int(part["PartNumber"]) != len(contiguous) + 1:
                break
            contiguous.append(part)
        uploaded = sum(int(p["Size"]) for p in contiguous)
        return _State(contiguous, uploaded, chunks)

    def _pages(self, operation: str, **arguments: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator(operation)
        yield from paginator.paginate(Bucket=self.bucket, **arguments)

    def _session_objects(self, session_id: str) -> list[str]:
        return [
            item["Key"]
            for page in self._pages("list_objects_v2", Prefix=self._session_prefix(session_id))
            for item in page.get("Contents", [])
        ]


def _no_fence() -> None:
    """Writes without a lease (tests, single-process use) have nothing to check."""


def _boto3_client() -> Any:
    import boto3

    return boto3.client("s3")


def _session_of(head: dict[str, Any]) -> str:
    """The session that committed an object ("" if none of ours did)."""
    metadata: dict[str, str] = head.get("Metadata", {})
    return metadata.get(SESSION_METADATA, "")


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
