"""Soak test: many clients with random faults against `bits-wsgi serve`, for a set time.

    .venv/bin/python -m benchmarks.soak --minutes 10 [--clients 6]
        [--server builtin|waitress|gunicorn|granian]
        [--backend redis://HOST:PORT/DB --data-dir DIR|s3://BUCKET/PREFIX]

With ``--backend``, the server keeps sessions in that Redis and the bytes in the shared
directory or S3 bucket (boto3 reads ``AWS_ENDPOINT_URL`` and credentials from the environment;
the bucket is created if missing); Redis and the S3 endpoint outlive the server's crashes.

Not part of `make test`. Each client process uploads files of random sizes in fragments of
random sizes and, at random, disconnects in the middle of a fragment, repeats a fragment, skips
ahead (a gap), cancels, or abandons its session; every few minutes the whole server is
SIGKILLed and restarted on the same ROOT. Clients resynchronise as Windows does (416 and the
received offset, a new session on 0x8020001F, backoff on connection errors). At the end every
committed file is checked against the bytes its client sent. The report counts uploads, bytes,
faults injected and answers by kind; any wrong byte, lost upload or unexpected answer fails it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import http.client
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
KiB, MiB = 1024, 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    def __init__(self, port: int, counts: collections.Counter[str]) -> None:
        self.port = port
        self.counts = counts
        self.connection: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return self.connection

    def drop(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def post(
        self, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str]]:
        """One packet; connection errors are retried with backoff (the server may be down)."""
        delay = 0.05
        for _ in range(200):
            try:
                connection = self._connection()
                sent = {"Content-Length": str(len(body)), **headers}
                connection.request("BITS_POST", path, body=body, headers=sent)
                response = connection.getresponse()
                response.read()
                answer = {k.lower(): v for k, v in response.getheaders()}
                self.counts[f"status {response.status}"] += 1
                if response.status == 503:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                return response.status, answer
            except (OSError, http.client.HTTPException):
                self.counts["connection error (retried)"] += 1
                self.drop()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise RuntimeError("server unreachable for too long")

    def partial(self, path: str, headers: dict[str, str], body: bytes) -> None:
        """Send the headers and part of the body, then hang up: a client crash."""
        try:
            connection = self._connection()
            connection.putrequest("BITS_POST", path)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                connection.putheader(name, value)
            connection.endheaders()
            connection.send(body[: random.randint(0, len(body))])
        except OSError:
            pass
        self.drop()


class Destinations:
    """Where committed uploads appear: files below ROOT, or objects in an S3 bucket."""

    def __init__(self, root: Path, data_dir: str | None) -> None:
        self.root = root
        self.bucket, self.prefix, self._s3 = "", "", None
        if data_dir and data_dir.startswith("s3://"):
            self.bucket, _, prefix = data_dir.removeprefix("s3://").partition("/")
            self.prefix = prefix.rstrip("/") + "/" if prefix else ""

    def _client(self) -> Any:
        if self._s3 is None:  # one per client process, made after the fork
            import boto3

            self._s3 = boto3.client("s3")
        return self._s3

    def create_bucket(self) -> None:
        if self.bucket:
            client = self._client()
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=self.bucket)
            self._s3 = None

    def read(self, path: str) -> bytes | None:
        if not self.bucket:
            file = self.root / path.lstrip("/")
            return file.read_bytes() if file.exists() else None
        client = self._client()
        try:
            got = client.get_object(Bucket=self.bucket, Key=self.prefix + path.lstrip("/"))
        except client.exceptions.NoSuchKey:
            return None
        data: bytes = got["Body"].read()
        return data

    def remove(self, path: str) -> None:
        if not self.bucket:
            (self.root / path.lstrip("/")).unlink()
        else:
            self._client().delete_object(Bucket=self.bucket, Key=self.prefix + path.lstrip("/"))


def upload_one(client: Client, destinations: Destinations, number: int, rng: random.Random) -> str:
    """One upload with random faults; returns how it ended."""
    size = rng.choice([0, rng.randint(1, 64 * KiB), rng.randint(64 * KiB, 8 * MiB)])
    data = rng.randbytes(size)
    path = f"/soak/{os.getpid()}-{number}.bin"
    fragment = rng.choice([5 * KiB, 64 * KiB, 700 * KiB, 2 * MiB])
    status, ack = client.post(
        path, {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL}
    )
    if status != 200:
        raise AssertionError(f"create: {status} {ack}")
    session = ack["bits-session-id"]
    offset = 0
    restarts = 0
    while True:
        if size == 0:
            status, ack = client.post(
                path,
                {
                    "BITS-Packet-Type": "Fragment",
                    "BITS-Session-Id": session,
                    "Content-Range": "bytes */0",
                },
            )
        else:
            if offset >= size:
                break
            fault = rng.random()
            first = offset
            if fault < 0.05:
                client.counts["fault: gap"] += 1
                first = min(size - 1, offset + rng.randint(1, fragment))
            elif fault < 0.10 and offset > 0:
                client.counts["fault: repeat"] += 1
                first = max(0, offset - rng.randint(1, fragment))
            body = data[first : first + fragment]
            headers = {
                "BITS-Packet-Type": "Fragment",
                "BITS-Session-Id": session,
                "Content-Range": f"bytes {first}-{first + len(body) - 1}/{size}",
            }
            if 0.10 <= fault < 0.15:
                client.counts["fault: disconnect mid-fragment"] += 1
                client.partial(path, headers, body)
                first = offset  # the client does not know what arrived; it asks again
                body = data[first : first + fragment]
                headers["Content-Range"] = f"bytes {first}-{first + len(body) - 1}/{size}"
            if 0.15 <= fault < 0.16:
                client.counts["fault: cancel"] += 1
                status, _ = client.post(
                    path, {"BITS-Packet-Type": "Cancel-Session", "BITS-Session-Id": session}
                )
                assert status == 200, status
                assert destinations.read(path) is None, "a cancelled upload was committed"
                return "cancelled"
            if 0.16 <= fault < 0.17:
                client.counts["fault: abandoned session"] += 1
                return "abandoned"
            status, ack = client.post(path, headers, body)
        if status == 500 and ack.get("bits-error-code") == "0x8020001F":
            restarts += 1  # the session was lost: Windows starts over
            if restarts > 5:
                raise AssertionError("session lost again and again")
            status, ack = client.post(
                path, {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL}
            )
            session, offset = ack["bits-session-id"], 0
            continue
        if status not in (200, 416):
            raise AssertionError(f"fragment: {status} {ack}")
        offset = int(ack["bits-received-content-range"])
        if offset > size:
            raise AssertionError(f"server claims {offset} of {size} bytes")
        if size == 0:
            break
    status, ack = client.post(
        path, {"BITS-Packet-Type": "Close-Session", "BITS-Session-Id": session}
    )
    if status != 200:
        raise AssertionError(f"close: {status} {ack}")
    committed = destinations.read(path)
    if committed is None:
        raise AssertionError(f"{path}: closed, but nothing was committed")
    if hashlib.sha256(committed).digest() != hashlib.sha256(data).digest():
        raise AssertionError(f"{path}: committed bytes differ from the bytes sent")
    destinations.remove(path)  # checked; a long soak must not fill the disk
    client.counts["bytes committed"] += size
    return "committed"


def client_process(
    port: int, destinations: Destinations, deadline: float, seed: int, out: Any
) -> None:
    counts: collections.Counter[str] = collections.Counter()
    client = Client(port, counts)
    rng = random.Random(seed)
    number = 0
    try:
        while time.time() < deadline:
            counts["uploads " + upload_one(client, destinations, number, rng)] += 1
            number += 1
    except Exception as exc:  # reported, and fails the soak
        counts[f"FAILURE: {exc}"[:200]] += 1
    out.put(dict(counts))


def start_server(
    root: Path, port: int, server: str, log: Any, extra: list[str]
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bits_wsgi",
            "serve",
            str(root),
            "--port",
            str(port),
            "--session-limit",
            "0",
            "--server",
            server,
            "--log-level",
            "warning",
            *extra,
        ],
        start_new_session=True,
        stdout=log,
        stderr=log,
    )
    while True:
        if process.poll() is not None:  # a server that cannot start ends the soak, not a hang
            raise RuntimeError(f"the server exited with {process.returncode} (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process
        except OSError:
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--server", default="builtin", help="the engine serve runs on")
    parser.add_argument("--kill-every", type=float, default=120, help="seconds between crashes")
    parser.add_argument("--backend", default=None, help="redis://HOST:PORT/DB")
    parser.add_argument(
        "--data-dir", default=None, help="with --backend: DIR or s3://BUCKET/PREFIX"
    )
    args = parser.parse_args()
    extra = ["--backend", args.backend, "--data-dir", args.data_dir] if args.backend else []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as scratch:
        root = Path(scratch) / "root"
        port = free_port()
        log = open(Path(scratch) / "server.log", "ab")  # noqa: SIM115 - open for the whole run
        began = time.time()
        deadline = began + args.minutes * 60
        destinations = Destinations(root, args.data_dir if args.backend else None)
        destinations.create_bucket()
        server = start_server(root, port, args.server, log, extra)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        clients = [
            context.Process(target=client_process, args=(port, destinations, deadline, n, results))
            for n in range(args.clients)
        ]
        for process in clients:
            process.start()
        crashes = 0
        next_kill = time.time() + args.kill_every
        while time.time() < deadline:
            time.sleep(1)
            if time.time() >= next_kill and time.time() < deadline - 10:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)
                crashes += 1
                time.sleep(1)
                server = start_server(root, port, args.server, log, extra)
                next_kill = time.time() + args.kill_every
        totals: collections.Counter[str] = collections.Counter()
        for _ in clients:
            totals.update(results.get(timeout=300))
        for process in clients:
            process.join(60)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
        totals["server crashes (SIGKILL, restart)"] = crashes
        report = {
            "minutes": round((time.time() - began) / 60, 1),
            "clients": args.clients,
            "server": args.server,
            "backend": " ".join(extra) or "files under ROOT",
            "counts": dict(sorted(totals.items())),
        }
        print(json.dumps(report, indent=2))
        failures = [key for key in totals if key.startswith("FAILURE")]
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
