"""A fleet on slow links, and connections that trickle: what a serving model costs under a crowd.

    .venv/bin/python -m benchmarks.slow_links links --server serve --clients 256 \\
        --size 2097152 --fragment 1048576 --rate 65536 [--rounds 3]
    .venv/bin/python -m benchmarks.slow_links trickle --server serve --slow 64 --seconds 20

``links``: N clients, each on its own keep-alive connection, upload S bytes in F-byte fragments
(Create-Session, the fragments, Close-Session), each sending its bodies at no more than R bytes
a second. Reported: each client's time against S/R (the fraction of its link speed it got), the
slowest client, errors, and the growth of the server's RSS (all its processes, sampled every
0.2 s) over its idle size. Every committed file is checked by sha256.

``trickle``: K connections send a request head (half of them) or a fragment body (the other
half) at one byte a second, while one well-behaved client uploads small files back to back.
Reported: that client's packet latencies (median, worst), and how many trickling connections
the server dropped, and after how long.

Servers run on 127.0.0.1 and are stopped by their PID (``benchmarks.run.Server``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .run import Server, servers

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"


def candidates(base: Path) -> dict[str, Server]:
    """The serving models measured (``serve`` is what ships): the suite's servers, and gunicorn
    with many threads."""
    pool = servers(base)
    threads = [*pool["serve-gunicorn"].command, "--threads", "64"]
    pool["serve-threads-64"] = Server("serve-threads-64", base / "serve-threads-64", threads)
    return pool


# -- the wire -------------------------------------------------------------------------------


async def exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    head: bytes,
    body: bytes = b"",
    rate: float | None = None,
) -> tuple[int, dict[str, str]]:
    """Send one request (its body paced at ``rate`` bytes/s) and read its Ack."""
    writer.write(head)
    if rate is None:
        writer.write(body)
    else:
        step, started, sent = max(1, int(rate) // 20), time.monotonic(), 0
        while sent < len(body):
            writer.write(body[sent : sent + step])
            await writer.drain()
            sent += min(step, len(body) - sent)
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await writer.drain()
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return int(lines[0].split()[1]), headers


def request(path: str, packet: str, session: str = "", extra: str = "", length: int = 0) -> bytes:
    head = f"BITS_POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nBITS-Packet-Type: {packet}\r\n"
    if session:
        head += f"BITS-Session-Id: {session}\r\n"
    return (head + extra + f"Content-Length: {length}\r\n\r\n").encode("latin-1")


async def upload(port: int, path: str, data: bytes, fragment: int, rate: float | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        status, headers = await exchange(
            reader,
            writer,
            request(path, "Create-Session", extra=f"BITS-Supported-Protocols: {PROTOCOL}\r\n"),
        )
        if status != 200:
            raise RuntimeError(f"Create-Session: {status} {headers.get('bits-error-code')}")
        session = headers["bits-session-id"]
        for first in range(0, len(data), fragment):
            body = data[first : first + fragment]
            span = f"Content-Range: bytes {first}-{first + len(body) - 1}/{len(data)}\r\n"
            head = request(path, "Fragment", session, span, len(body))
            status, headers = await exchange(reader, writer, head, body, rate)
            if status != 200:
                raise RuntimeError(f"Fragment: {status} {headers.get('bits-error-code')}")
        status, _ = await exchange(reader, writer, request(path, "Close-Session", session))
        if status != 200:
            raise RuntimeError(f"Close-Session: {status}")
    finally:
        writer.close()


# -- the server's memory ----------------------------------------------------------------------


@dataclass
class RssSampler:
    """The summed RSS of a process group, sampled on a thread."""

    group: int
    peak: int = 0
    running: bool = True
    thread: threading.Thread | None = field(default=None, repr=False)

    def current(self) -> int:
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.getpgid(int(pid)) != self.group:
                    continue
                with open(f"/proc/{pid}/statm") as handle:
                    total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                continue
        return total

    def __enter__(self) -> RssSampler:
        def sample() -> None:
            while self.running:
                self.peak = max(self.peak, self.current())
                time.sleep(0.2)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        if self.thread is not None:
            self.thread.join()


# -- the scenarios ----------------------------------------------------------------------------


def links(server: Server, clients: int, size: int, fragment: int, rate: float) -> dict[str, object]:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    assert server.process is not None
    sampler = RssSampler(os.getpgid(server.process.pid))
    idle = sampler.current()
    times: list[float] = []
    errors: list[str] = []

    async def one(n: int) -> None:
        started = time.monotonic()
        try:
            await upload(server.port, f"/c{n}/f.bin", data, fragment, rate)
            times.append(time.monotonic() - started)
        except Exception as exc:  # a failed client is counted, never hidden
            errors.append(f"{type(exc).__name__}: {exc}")

    async def everyone() -> None:
        await asyncio.gather(*(one(n) for n in range(clients)))

    with sampler:
        asyncio.run(everyone())
    committed = [
        hashlib.sha256((server.root / f"c{n}" / "f.bin").read_bytes()).hexdigest() == digest
        for n in range(clients)
        if (server.root / f"c{n}" / "f.bin").exists()
    ]
    ideal = size / rate
    fractions = sorted(ideal / t for t in times)
    server.clean()
    return {
        "median_fraction_of_link": statistics.median(fractions) if fractions else 0.0,
        "slowest_fraction_of_link": fractions[0] if fractions else 0.0,
        "errors": float(len(errors) + committed.count(False) + clients - len(committed)),
        "rss_growth_mib": (sampler.peak - idle) / 2**20,
        "first_error": errors[0] if errors else "",
    }


def trickle(server: Server, slow: int, seconds: float) -> dict[str, object]:
    dropped: list[float] = []
    latencies: list[float] = []
    data = os.urandom(4096)

    async def slow_connection(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        if n % 2:  # a body at one byte a second, after a fast Create-Session
            path = f"/slow{n}/f.bin"
            extra = f"BITS-Supported-Protocols: {PROTOCOL}\r\n"
            _, headers = await exchange(
                reader, writer, request(path, "Create-Session", extra=extra)
            )
            span = "Content-Range: bytes 0-999/1000\r\n"
            writer.write(request(path, "Fragment", headers["bits-session-id"], span, 1000))
            trickled = b"x" * 1000
        else:  # a request head at one byte a second
            trickled = request(f"/slow{n}/f.bin", "Ping")
        try:
            for byte in trickled:
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof():
                    raise ConnectionResetError
                await asyncio.sleep(1.0)
                if time.monotonic() - started > seconds + 5:
                    return
        except (ConnectionError, OSError):
            dropped.append(time.monotonic() - started)
        finally:
            writer.close()

    async def well_behaved() -> None:
        await asyncio.sleep(2.0)  # the trickling connections are all open by now
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            await upload(server.port, f"/good/{n}.bin", data, 4096, None)
            latencies.append((time.monotonic() - started) / 3)  # three packets per upload
            n += 1

    async def everyone() -> None:
        tasks = [asyncio.create_task(slow_connection(n)) for n in range(slow)]
        await well_behaved()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()

    asyncio.run(everyone())
    server.clean()
    return {
        "uploads": float(len(latencies)),
        "median_packet_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "worst_packet_ms": max(latencies) * 1000 if latencies else 0.0,
        "dropped": float(len(dropped)),
        "dropped_after_s_median": statistics.median(dropped) if dropped else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_links")
    parser.add_argument("scenario", choices=["links", "trickle"])
    parser.add_argument("--server", action="append", required=True)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--size", type=int, default=2 * 2**20)
    parser.add_argument("--fragment", type=int, default=2**20)
    parser.add_argument("--rate", type=float, default=64 * 1024)
    parser.add_argument("--slow", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="bits-slow-") as base:
        servers = candidates(Path(base))
        for _ in range(args.rounds):
            for name in args.server:  # interleaved: A B A B ...
                server = servers[name]
                server.start()
                try:
                    if args.scenario == "links":
                        outcome = links(server, args.clients, args.size, args.fragment, args.rate)
                    else:
                        outcome = trickle(server, args.slow, args.seconds)
                finally:
                    server.stop()
                results.setdefault(name, []).append(outcome)
                print(name, json.dumps(outcome), flush=True)
    print(json.dumps({"scenario": args.scenario, "args": vars(args), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
