"""Random fragment schedules against a model of the offset (D2): the file ends byte-exact.

Each schedule mixes in-order fragments, repeats, overlaps, gaps, bodies cut short by a
disconnecting client, and restarts of the server process (a new middleware on the same root).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bits_wsgi import BITSMiddleware
from bits_wsgi.backends import Backend, MemoryBackend

from ..conftest import BitsClient, call, fallback_app, raw_environ
from .offset_model import expected

steps = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "send", "short", "restart"]),
        st.integers(min_value=0, max_value=4000),
        st.integers(min_value=1, max_value=900),
    ),
    max_size=25,
)


def send(app: Any, session_id: str, data: bytes, first: int, length: int, short: bool) -> Any:
    total = len(data)
    body = data[first : first + length]
    environ = raw_environ(
        HTTP_BITS_PACKET_TYPE="Fragment",
        HTTP_BITS_SESSION_ID=session_id,
        HTTP_CONTENT_RANGE=f"bytes {first}-{first + length - 1}/{total}",
        CONTENT_LENGTH=str(length),
    )
    environ["wsgi.input"] = io.BytesIO(body[: length // 2] if short else body)
    return call(app, environ)


def run_schedule(
    data: bytes, schedule: list[tuple[str, int, int]], make_app: Any, root: Path
) -> None:
    app = make_app()
    client = BitsClient(app)
    assert client.create().status_int == 200
    assert client.session_id is not None
    received, total = 0, len(data)
    for action, start, length in schedule:
        if action == "restart":
            app = make_app()
            continue
        if total == 0:
            break
        first = start % total
        length = min(length, total - first)
        status, headers = send(app, client.session_id, data, first, length, action == "short")
        want_status, received = expected(received, total, first, length, action == "short")
        assert int(status.split()[0]) == want_status, (action, first, length, headers)
        assert headers["BITS-Received-Content-Range"] == str(received)
    while received < total:
        length = min(700, total - received)
        status, headers = send(app, client.session_id, data, received, length, False)
        assert status.startswith("200")
        received = int(headers["BITS-Received-Content-Range"])
    if total == 0:
        assert BitsClient(app).fragment(b"", 0, 0, session_id=client.session_id).status_int == 200
    assert (root / "f.bin").read_bytes() == data
    assert BitsClient(app).close(client.session_id).status_int == 200


@given(data=st.binary(max_size=4000), schedule=steps)
@settings(max_examples=150, deadline=None)
def test_filesystem_backend_schedules(data: bytes, schedule: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        run_schedule(data, schedule, lambda: BITSMiddleware(fallback_app, root), root)


@given(data=st.binary(max_size=4000), schedule=steps)
@settings(max_examples=150, deadline=None)
def test_memory_backend_schedules(data: bytes, schedule: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        backend: Backend = MemoryBackend()  # a restart keeps the process, so the memory
        run_schedule(
            data, schedule, lambda: BITSMiddleware(fallback_app, root, backend=backend), root
        )
