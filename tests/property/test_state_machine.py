"""A hypothesis state machine: Create, Fragment, Close, Cancel and restarts against a model.

Several sessions at once, each to its own destination, with repeats, overlaps, gaps, bodies cut
short, packets after Close or Cancel, restarts of the middleware on the same root, and the same
fragment sent twice at once (two threads: a client's retry racing its original).
Invariants: the server's offset is the model's, never more than the bytes stored; a committed
file is byte-exact; nothing incomplete is ever committed; tombstones answer as D4 says.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from bits_wsgi import BITSMiddleware

from ..conftest import BitsClient, call, fallback_app, raw_environ
from ..support.sessions import data_file as stored_data
from .offset_model import expected


@dataclass
class Upload:
    name: str
    data: bytes
    session_id: str
    received: int = 0
    state: str = "active"  # active, closed, cancelled
    committed: bool = False


class UploadMachine(RuleBasedStateMachine):
    uploads = Bundle("uploads")

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="bits-sm-"))
        self.app = BITSMiddleware(fallback_app, self.root, session_limit=None)
        self.count = 0
        self.all: list[Upload] = []

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def client(self, upload: Upload) -> BitsClient:
        client = BitsClient(self.app, path=f"/{upload.name}")
        client.session_id = upload.session_id
        return client

    @rule(target=uploads, data=st.binary(max_size=3000))
    def create(self, data: bytes) -> Upload:
        self.count += 1
        name = f"u{self.count}.bin"
        client = BitsClient(self.app, path=f"/{name}")
        assert client.create().status_int == 200
        assert client.session_id is not None
        upload = Upload(name=name, data=data, session_id=client.session_id)
        self.all.append(upload)
        return upload

    @rule()
    def restart(self) -> None:
        self.app = BITSMiddleware(fallback_app, self.root, session_limit=None)

    @rule(
        upload=uploads, start=st.integers(0, 3100), length=st.integers(1, 1200), short=st.booleans()
    )
    def fragment(self, upload: Upload, start: int, length: int, short: bool) -> None:
        total = len(upload.data)
        if total == 0:
            first, length = 0, 0
            spec = "bytes */0"
        else:
            first = start % total
            length = min(length, total - first)
            spec = f"bytes {first}-{first + length - 1}/{total}"
        body = upload.data[first : first + length]
        sent = body[: length // 2] if short and length else body
        status, headers = call(self.app, _fragment_environ(upload, spec, length, sent))
        code = int(status.split()[0])
        if upload.state != "active":
            assert code == 500 and headers["BITS-Error-Code"] == "0x8020001F"
            return
        expected_status, received = expected(
            upload.received, len(upload.data), first, length, short
        )
        assert code == expected_status, (upload, first, length, short, headers)
        assert headers["BITS-Received-Content-Range"] == str(received)
        upload.received = received
        if received == total:
            upload.committed = True

    def _send(self, upload: Upload, first: int, length: int) -> tuple[int, int]:
        total = len(upload.data)
        spec = f"bytes {first}-{first + length - 1}/{total}" if total else "bytes */0"
        body = upload.data[first : first + length]
        status, headers = call(self.app, _fragment_environ(upload, spec, length, body))
        return int(status.split()[0]), int(headers.get("BITS-Received-Content-Range", -1))

    @rule(upload=uploads, start=st.integers(0, 3100), length=st.integers(1, 1200))
    def concurrent_duplicates(self, upload: Upload, start: int, length: int) -> None:
        """The same fragment twice at once: the session's lock orders them, so one applies it
        and the other sees its effect (a duplicate, or the stored final Ack)."""
        if upload.state != "active":
            return
        total = len(upload.data)
        first = start % total if total else 0
        length = min(length, total - first) if total else 0
        results: list[tuple[int, int]] = []
        barrier = threading.Barrier(2)

        def send() -> None:
            barrier.wait()
            results.append(self._send(upload, first, length))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        once = expected(upload.received, total, first, length, False)
        twice = expected(once[1], total, first, length, False)
        assert sorted(results) == sorted([once, twice]), (upload, first, length, results)
        upload.received = twice[1]
        if upload.received == total:
            upload.committed = True
        event("concurrent duplicates")

    @rule(upload=uploads, size=st.integers(1, 1200))
    def send_the_rest(self, upload: Upload, size: int) -> None:
        """What a well-behaved client does: in order from the server's offset, to the end."""
        if upload.state != "active":
            return
        if not upload.data:
            self.fragment(upload, 0, 1, False)
        while upload.received < len(upload.data):
            self.fragment(upload, upload.received, size, False)
        assert upload.committed
        event("completed an upload")

    @rule(upload=uploads)
    def close(self, upload: Upload) -> None:
        assert self.client(upload).close().status_int == 200
        if upload.state == "active":
            upload.state = "closed"

    @rule(upload=uploads)
    def cancel(self, upload: Upload) -> None:
        assert self.client(upload).cancel().status_int == 200
        if upload.state == "active":
            upload.state = "cancelled"

    @invariant()
    def files_are_exact_and_only_complete_uploads_are_committed(self) -> None:
        for upload in self._uploads():
            path = self.root / upload.name
            if upload.committed:
                assert path.read_bytes() == upload.data
            else:
                assert not path.exists()

    @invariant()
    def no_offset_runs_ahead_of_the_bytes(self) -> None:
        for upload in self._uploads():
            if upload.state != "active" or upload.committed:
                continue
            data_file = stored_data(self.root, upload.session_id)
            assert data_file.stat().st_size >= upload.received
            assert data_file.read_bytes()[: upload.received] == upload.data[: upload.received]

    def _uploads(self) -> list[Upload]:
        return self.all


def _fragment_environ(upload: Upload, spec: str, length: int, body: bytes) -> dict[str, object]:
    """A Fragment declaring ``length`` bytes, whose body is ``body`` (shorter: cut short)."""
    environ = raw_environ(
        PATH_INFO=f"/{upload.name}",
        HTTP_BITS_PACKET_TYPE="Fragment",
        HTTP_BITS_SESSION_ID=upload.session_id,
        HTTP_CONTENT_RANGE=spec,
        CONTENT_LENGTH=str(length),
    )
    environ["wsgi.input"] = io.BytesIO(body)
    return environ


UploadMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestUploadMachine = UploadMachine.TestCase
