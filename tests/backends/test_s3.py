"""What only the S3 blob store promises: parts of S3's size, staged fragments, crash-consistent
offsets, aborted multipart uploads. Against a real moto_server and redis-server."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bits_wsgi import BITSMiddleware
from bits_wsgi.backends import ComposedBackend
from bits_wsgi.backends.memory import MemoryRecords, ThreadLocker
from bits_wsgi.backends.redis import RedisBackend
from bits_wsgi.backends.s3 import MIN_PART_SIZE, S3Store
from bits_wsgi.errors import BackendUnavailable
from bits_wsgi.paths import Destination
from bits_wsgi.testing import DESTINATION, SESSION_A, new_record

from ..conftest import BitsClient, error_of, fallback_app
from ..support.s3 import new_bucket, s3_client

PART = MIN_PART_SIZE


@pytest.fixture
def client(s3_endpoint: str) -> Any:
    return s3_client(s3_endpoint)


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return new_bucket(s3_endpoint)


@pytest.fixture
def store(client: Any, bucket: str) -> S3Store:
    return S3Store(bucket, client=client, part_size=PART)


def started(store: S3Store) -> S3Store:
    store.create_data(SESSION_A, DESTINATION)
    return store


def uploads_in_progress(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def objects(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def parts(client: Any, bucket: str) -> list[int]:
    (upload,) = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    listed = client.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return [int(p["Size"]) for p in listed.get("Parts", [])]


def committed(client: Any, bucket: str, key: str = DESTINATION) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def test_fragments_are_staged_until_a_whole_part_is_full(
    store: S3Store, client: Any, bucket: str
) -> None:
    started(store)
    payload = os.urandom(2 * PART + 123_457)
    fragment = 1_500_000  # smaller than S3's minimum part, as BITS fragments often are
    for first in range(0, len(payload), fragment):
        store.write(SESSION_A, first, [payload[first : first + fragment]])
        assert store.data_size(SESSION_A) == min(first + fragment, len(payload))
    assert parts(client, bucket) == [PART, PART]  # every part but the last is exactly one size
    staged = sorted(int(k.rsplit("-", 1)[1]) for k in objects(client, bucket) if "/chunk-" in k)
    assert staged and staged[0] == 2 * PART  # only the remainder: consumed chunks are gone
    store.commit(SESSION_A, Destination(Path("/unused"), DESTINATION), overwrite=False)
    assert hashlib.sha256(committed(client, bucket)).digest() == hashlib.sha256(payload).digest()
    head = client.head_object(Bucket=bucket, Key=DESTINATION)
    assert head["Metadata"] == {"bits-session": SESSION_A}
    assert uploads_in_progress(client, bucket) == []


def test_a_fragment_larger_than_a_part_fills_several(
    store: S3Store, client: Any, bucket: str
) -> None:
    started(store)
    payload = os.urandom(13_000_000)  # Windows' largest fragment
    store.write(SESSION_A, 0, [payload[i : i + 65_536] for i in range(0, len(payload), 65_536)])
    assert parts(client, bucket) == [PART, PART]
    assert store.data_size(SESSION_A) == len(payload)
    store.commit(SESSION_A, Destination(Path("/unused"), DESTINATION), overwrite=False)
    assert committed(client, bucket) == payload


class _Disconnects:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise OSError("client went away")


def test_a_client_gone_mid_body_changes_nothing_in_s3(
    store: S3Store, client: Any, bucket: str
) -> None:
    started(store)
    store.write(SESSION_A, 0, [b"a" * 1000])
    before = sorted(objects(client, bucket))
    with pytest.raises(OSError, match="went away"):
        store.write(SESSION_A, 1000, _Disconnects(os.urandom(3 * PART)))
    assert parts(client, bucket) == []
    assert sorted(objects(client, bucket)) == before
    assert store.data_size(SESSION_A) == 1000


class _FailsOnce:
    """An S3 client whose ``operation`` fails once: the host dies at that step of a write."""

    def __init__(self, client: Any, operation: str) -> None:
        self._client = client
        self._operation = operation
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name != self._operation or self.failed:
            return method

        def fail(**arguments: Any) -> Any:
            self.failed = True
            raise ConnectionResetError("host died")

        return fail


@pytest.mark.parametrize(
    ("dies_at", "offset_after"),
    [
        # the remainder is stored as the chunk where the part will end, the part is not sent
        ("upload_part", 3_000_000),
        # the part is in S3, the chunk it consumed is not deleted
        ("delete_object", 7_000_000),
    ],
)
def test_a_crash_inside_a_write_keeps_the_offset_at_the_bytes_s3_holds(
    client: Any, bucket: str, dies_at: str, offset_after: int
) -> None:
    first = S3Store(bucket, client=client, part_size=PART)
    started(first)
    payload = os.urandom(2 * PART)
    first.write(SESSION_A, 0, [payload[:3_000_000]])  # one staged chunk of 3 MB
    crashing = S3Store(bucket, client=_FailsOnce(client, dies_at), part_size=PART)
    with pytest.raises(ConnectionResetError):
        crashing.write(SESSION_A, 3_000_000, [payload[3_000_000:7_000_000]])  # fills a part
    # Another host sees exactly what S3 durably holds: a chunk off the chain (the remainder
    # without its part, or the chunk inside the part) counts for nothing.
    another_host = S3Store(bucket, client=client, part_size=PART)
    assert another_host.data_size(SESSION_A) == offset_after
    another_host.write(SESSION_A, offset_after, [payload[offset_after:]])
    another_host.commit(SESSION_A, Destination(Path("/unused"), DESTINATION), overwrite=False)
    assert committed(client, bucket) == payload
    assert [k for k in objects(client, bucket) if "/chunk-" in k and k.endswith("0" * 20)] == []


def test_small_fragments_cost_no_rewrites(store: S3Store, client: Any, bucket: str) -> None:
    """64 KiB fragments: each is one chunk PUT; nothing already staged is read or rewritten
    until a part is full (the cost stays linear in the upload, not quadratic)."""
    started(store)
    payload = os.urandom(PART + 100_000)
    calls: dict[str, int] = {}
    counted = _Counting(client, calls)
    store.client = counted
    fragment = 64 * 1024
    for first in range(0, len(payload), fragment):
        store.write(SESSION_A, first, [payload[first : first + fragment]])
    fragments = -(-len(payload) // fragment)
    # one chunk each, but the fragment that fills the part goes straight into it
    assert calls["put_object"] == fragments - 1
    assert calls["get_object"] == PART // fragment - 1  # the staged chunks, read back once
    assert calls["upload_part"] == 1
    store.commit(SESSION_A, Destination(Path("/unused"), DESTINATION), overwrite=False)
    assert committed(client, bucket) == payload


def test_a_fragment_lists_its_session_once(client: Any, bucket: str) -> None:
    """Loading the session (its offset) and writing the fragment, under one lock, share one
    listing of the parts and chunks: S3 cannot change meanwhile."""
    calls: dict[str, int] = {}
    store = S3Store(bucket, client=_Counting(client, calls), part_size=PART)
    backend = ComposedBackend(
        records=MemoryRecords(), blobs=store, locker=ThreadLocker(lambda session_id: True)
    )
    backend.create(new_record())
    fragment = os.urandom(64 * 1024)
    for number in range(3):
        with backend.lock(SESSION_A, 1.0):
            record = backend.load(SESSION_A)
            assert record is not None and record.received == number * len(fragment)
            backend.write(SESSION_A, record.received, [fragment])
    assert calls["paginate list_parts"] == calls["paginate list_objects_v2"] == 3
    assert calls["put_object"] == 3 + 1  # a chunk per fragment, and the upload's manifest


class _Counting:
    """Counts the client's calls by name, and the paginated listings by operation."""

    def __init__(self, client: Any, calls: dict[str, int]) -> None:
        self._client = client
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method) or name.startswith("_"):
            return method
        if name == "get_paginator":

            def paginator(operation: str) -> Any:
                key = f"paginate {operation}"
                self._calls[key] = self._calls.get(key, 0) + 1
                return method(operation)

            return paginator

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] = self._calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


def test_a_crash_after_completion_reports_the_committed_size(
    store: S3Store, client: Any, bucket: str
) -> None:
    """The record may not have been saved as committed: the offset must still be whole."""
    started(store)
    store.write(SESSION_A, 0, [b"x" * 5000])
    store.commit(SESSION_A, Destination(Path("/unused"), DESTINATION), overwrite=False)
    fresh = S3Store(bucket, client=client, part_size=PART)
    assert fresh.data_size(SESSION_A) == 5000
    fresh.commit(SESSION_A, Destination(Path("/unused"), DESTINATION), overwrite=False)


@pytest.mark.parametrize("removal", ["discard_data", "delete_data"])
def test_a_cancelled_or_expired_session_aborts_its_multipart_upload(
    store: S3Store, client: Any, bucket: str, removal: str
) -> None:
    started(store)
    store.write(SESSION_A, 0, [os.urandom(PART + 10)])
    assert uploads_in_progress(client, bucket) == [DESTINATION]
    getattr(store, removal)(SESSION_A)
    assert uploads_in_progress(client, bucket) == []
    assert objects(client, bucket) == []
    assert store.data_size(SESSION_A) is None


def test_parts_smaller_than_s3s_minimum_are_refused(client: Any, bucket: str) -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3Store(bucket, client=client, part_size=PART - 1)


def test_s3_unreachable_is_backend_unavailable() -> None:
    import boto3
    from botocore.config import Config

    unreachable = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # discard: nothing listens
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(BackendUnavailable):
        S3Store("bucket", client=unreachable).create_data(SESSION_A, DESTINATION)


# -- through the middleware ----------------------------------------------------------------


@pytest.fixture
def hosts(redis_url: str, client: Any, bucket: str, tmp_path: Path) -> list[BitsClient]:
    prefix = f"t{uuid.uuid4().hex}"
    return [
        BitsClient(
            BITSMiddleware(
                fallback_app,
                tmp_path / f"root{n}",  # each host's own: nothing of S3 uploads lands here
                backend=RedisBackend(
                    S3Store(bucket, prefix="fleet", client=client, part_size=PART),
                    url=redis_url,
                    prefix=prefix,
                ),
            ),
            path="/dumps/f.bin",
        )
        for n in range(3)
    ]


def test_any_host_takes_any_fragment_with_s3(
    hosts: list[BitsClient], client: Any, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(PART + 2_000_000)
    assert hosts[0].create().status_int == 200
    session = hosts[0].session_id
    for number, first in enumerate(range(0, len(data), 1_000_000)):
        response = hosts[number % 3].fragment(
            data[first : first + 1_000_000], first, len(data), session_id=session
        )
        assert response.status_int == 200, response.headers
    assert committed(client, bucket, "fleet/dumps/f.bin") == data
    assert hosts[1].close(session).status_int == 200
    assert sorted(objects(client, bucket)) == ["fleet/dumps/f.bin"]  # working state gone
    assert not any(p.is_file() for p in tmp_path.rglob("*") if "root" in str(p))


def test_an_existing_object_refuses_the_upload_at_create(
    hosts: list[BitsClient], client: Any, bucket: str
) -> None:
    client.put_object(Bucket=bucket, Key="fleet/dumps/f.bin", Body=b"theirs")
    assert error_of(hosts[0].create())[:2] == (403, "0x80070005")
    assert committed(client, bucket, "fleet/dumps/f.bin") == b"theirs"


def test_an_object_appearing_before_the_commit_is_kept(
    hosts: list[BitsClient], client: Any, bucket: str
) -> None:
    assert hosts[0].create().status_int == 200
    client.put_object(Bucket=bucket, Key="fleet/dumps/f.bin", Body=b"theirs")
    session = hosts[0].session_id
    assert error_of(hosts[1].fragment(b"mine", 0, 4, session_id=session))[:2] == (
        403,
        "0x80070005",
    )
    assert committed(client, bucket, "fleet/dumps/f.bin") == b"theirs"


def test_upload_reply_mode_needs_local_files(redis_url: str, client: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="files on this host"):
        BITSMiddleware(
            fallback_app,
            tmp_path,
            backend=RedisBackend(S3Store("b", client=client), url=redis_url),
            notification_type="by-value",
            notification_url="http://127.0.0.1:9/notify",
        )


def test_a_new_record_starts_its_upload_for_the_destination(
    redis_url: str, store: S3Store, client: Any, bucket: str
) -> None:
    backend = RedisBackend(store, url=redis_url, prefix=f"t{uuid.uuid4().hex}")
    backend.create(new_record())
    assert uploads_in_progress(client, bucket) == [DESTINATION]
    backend.delete(SESSION_A)
    assert uploads_in_progress(client, bucket) == []


def test_cleanup_command_aborts_expired_uploads_in_s3(
    redis_url: str,
    s3_endpoint: str,
    client: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`bits-wsgi cleanup --data-dir s3://…`: the expired session's multipart upload is aborted
    and its staged bytes deleted; the live one keeps both."""
    from bits_wsgi.cli import main

    from ..support.s3 import s3_environment

    for name, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    url = redis_url.rsplit("/", 1)[0] + "/2"  # a database of its own: the default key prefix
    backend = RedisBackend(S3Store(bucket, prefix="fleet", client=client), url=url)
    backend.client.flushdb()
    old, live = (str(uuid.uuid4()).upper() for _ in range(2))
    for session_id, age in ((old, 7200), (live, 0)):
        record = new_record(session_id)
        record.destination = f"{session_id}.bin"
        record.last_activity = time.time() - age
        backend.create(record)
        backend.save(record)
        backend.write(session_id, 0, [b"staged bytes"])
    arguments = ["--backend", url, "--data-dir", f"s3://{bucket}/fleet"]
    assert main(["cleanup", str(tmp_path), *arguments, "--older-than", "3600"]) == 0
    assert capsys.readouterr().out.strip() == "removed 1 expired session"
    assert uploads_in_progress(client, bucket) == [f"fleet/{live}.bin"]
    assert all(old not in key for key in objects(client, bucket))
    assert backend.data_size(live) == len(b"staged bytes")


def test_a_forked_worker_gets_its_own_s3_client(client: Any, bucket: str) -> None:
    """boto3 clients must not cross a fork (gunicorn builds the app, then forks workers)."""
    made: list[int] = []

    def factory() -> Any:
        made.append(os.getpid())
        return client

    store = S3Store(bucket, client_factory=factory, part_size=PART)
    assert store.client is client and made == [os.getpid()]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        store.client  # noqa: B018 - the property makes the child's client
        os.write(write, b"ok" if made[-1] == os.getpid() and len(made) == 2 else b"no")
        os._exit(0)
    os.close(write)
    assert os.read(read, 2) == b"ok"
    os.close(read)
    os.waitpid(child, 0)
    assert made == [os.getpid()]  # the parent kept its own


def test_a_key_s3_cannot_store_is_refused_at_create(
    hosts: list[BitsClient], client: Any, bucket: str
) -> None:
    """Every name accepted at Create-Session can be committed (PROTOCOL.md §9.2, D23): S3 keys
    end at 1,024 bytes, so a longer destination never starts a session."""
    folders = "/dumps/" + "/".join(["d" * 200] * 5)  # the key: "fleet" + this + the name
    assert len("fleet" + folders + "/f.bin") == 1022
    refused = hosts[0].create(path=folders + "/ffff.bin")  # 1,025 bytes
    assert error_of(refused)[:2] == (400, "0x80070057")
    assert uploads_in_progress(client, bucket) == []
    assert hosts[0].create(path=folders + "/fff.bin").status_int == 200  # 1,024 bytes
