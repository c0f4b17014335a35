"""Real servers on 127.0.0.1 and a raw http.client BITS client to talk to them."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bits_wsgi.protocol import PROTOCOL_GUID

from ..support.ports import free_port, wait_for_port


class Server:
    """A process group we started; stopped by its PID, never anything else's."""

    def __init__(
        self,
        command: Sequence[str],
        port: int,
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ):
        self.port = port
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                list(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=cwd,
                env=None if env is None else {**os.environ, **env},
            )
        wait_for_port(port, self.process)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL to the master and its workers at once: a crash, not a shutdown."""
        self.signal(signal.SIGKILL)
        self.process.wait(30)
        # the workers die with the master; wait until no process of the group is left
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.process.wait(timeout)

    def worker_pids(self, expected: int = 1) -> list[int]:
        """The server's child processes, once ``expected`` of them exist: the port opens
        before the master has forked its workers."""
        for _ in range(600):
            children = self._children()
            if len(children) >= expected:
                return children
            time.sleep(0.05)
        return children

    def _children(self) -> list[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    children.append(int(entry.name))
        return children


PROJECT = Path(__file__).resolve().parents[2]

#: The server `bits-wsgi serve` runs on in these tests: its default (builtin; waitress with
#: --certfile) unless a test or the environment asks for another.
SERVE_SERVER = os.environ.get("BITS_WSGI_TEST_SERVER")


def start_serve(
    root: Path,
    log: Path,
    *args: str,
    port: int | None = None,
    server: str | None = None,
    env: dict[str, str] | None = None,
    crash: Sequence[str] = (),
) -> Server:
    """`bits-wsgi serve ROOT` on a free loopback port; the caller stops it.

    ``crash``: POINT and MARKER of tests/integration/crashing_serve.py, whose worker then
    SIGKILLs itself once at that point.
    """
    port = port or free_port()
    entry = ["tests.integration.crashing_serve", *crash] if crash else ["bits_wsgi"]
    command = [sys.executable, "-m", *entry, "serve", str(root), "--port", str(port), *args]
    kind = server or SERVE_SERVER
    if kind is not None:
        command += ["--server", kind]
    else:
        kind = "waitress" if "--certfile" in args else "builtin"
    started = Server(command, port, log, cwd=PROJECT if crash else None, env=env)
    if kind in ("builtin", "gunicorn", "waitress"):
        # The port opens before the master has forked every worker; a test that signals the
        # group at once could miss a worker still being forked.
        workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 2
        started.worker_pids(expected=workers)
    return started


@contextlib.contextmanager
def bits_serve(
    root: Path,
    log: Path,
    *args: str,
    port: int | None = None,
    server: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    server_process = start_serve(root, log, *args, port=port, server=server, env=env)
    try:
        yield server_process
    finally:
        server_process.stop()


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RawBits:
    """A BITS client made of http.client calls, as plain as the wire."""

    #: every client made; the integration conftest closes them after each test
    opened: list[RawBits] = []

    def __init__(self, port: int, path: str, auth: str | None = None) -> None:
        RawBits.opened.append(self)
        self.port = port
        self.path = path
        self.auth = auth
        self.session_id = ""
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def reconnect(self) -> None:
        self.connection.close()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def post(
        self, packet_type: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> http.client.HTTPResponse:
        sent = {
            "BITS-Packet-Type": packet_type,
            "Content-Length": str(len(body)),
            "User-Agent": "Microsoft BITS/7.8",
        }
        if self.auth:
            sent["Authorization"] = self.auth
        sent.update(headers or {})
        self.connection.request("BITS_POST", self.path, body=body, headers=sent)
        response = self.connection.getresponse()
        response.read()
        return response

    def create(self) -> http.client.HTTPResponse:
        response = self.post("Create-Session", {"BITS-Supported-Protocols": PROTOCOL_GUID})
        self.session_id = response.headers.get("BITS-Session-Id", "")
        return response

    def fragment(self, data: bytes, first: int, total: int) -> http.client.HTTPResponse:
        return self.post(
            "Fragment",
            {
                "BITS-Session-Id": self.session_id,
                "Content-Range": f"bytes {first}-{first + len(data) - 1}/{total}",
            },
            data,
        )

    def start_fragment(self, data: bytes, first: int, total: int, send: int) -> None:
        """Send the headers and only ``send`` bytes of the body, then stop, as a crash would."""
        self.connection.putrequest("BITS_POST", self.path)
        for name, value in {
            "BITS-Packet-Type": "Fragment",
            "BITS-Session-Id": self.session_id,
            "Content-Range": f"bytes {first}-{first + len(data) - 1}/{total}",
            "Content-Length": str(len(data)),
        }.items():
            self.connection.putheader(name, value)
        self.connection.endheaders()
        self.connection.send(data[:send])

    def close(self) -> http.client.HTTPResponse:
        return self.post("Close-Session", {"BITS-Session-Id": self.session_id})

    def upload_from(
        self, data: bytes, offset: int, fragment_size: int, until: int | None = None
    ) -> int:
        """Send fragments from ``offset`` (up to ``until``), resyncing on 416 as Windows does."""
        total = len(data)
        while offset < (total if until is None else until):
            chunk = data[offset : offset + fragment_size]
            response = self.fragment(chunk, offset, total)
            assert response.status in (200, 416), (response.status, response.headers)
            offset = int(response.headers["BITS-Received-Content-Range"])
        return offset


@contextlib.contextmanager
def background(command: Sequence[str], cwd: Path, port: int, log: Path) -> Iterator[None]:
    """A server command (``make serve``, the installed ``bits-wsgi serve``) in its own process
    group until ``port`` answers, stopped with SIGTERM to that group afterwards."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, process, timeout=300)  # make may install the [serve] extra first
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(90)


def owners(root: Path) -> dict[str, str]:
    """Destination → owner of every session under ``root``, as `bits-wsgi sessions` lists them."""
    listed = subprocess.run(
        [sys.executable, "-m", "bits_wsgi", "sessions", str(root), "--all", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return {row["destination"]: row["owner"] for row in rows}
