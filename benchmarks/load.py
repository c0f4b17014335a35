"""The load client: keep-alive connections in several processes, every result checked.

Each worker process uploads its own file with raw ``http.client`` BITS packets (Create-Session,
Fragments, Close-Session) and returns its timings; the caller checks the sha256 of every
committed file, so a fast wrong answer fails the run.
"""

from __future__ import annotations

import hashlib
import http.client
import multiprocessing
import os
import time
from dataclasses import dataclass

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"


@dataclass(frozen=True)
class Job:
    port: int
    path: str
    size: int
    fragment: int
    seed: int
    uploads: int = 1  # several small uploads in a row, each create + fragments + close


def payload(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, reproducible
    repeats = -(-size // len(block))
    return (block * repeats)[:size]


def run_job(job: Job, start: multiprocessing.synchronize.Event) -> tuple[float, float]:
    data = payload(job.size, job.seed)
    views = [data[i : i + job.fragment] for i in range(0, job.size, job.fragment)]
    connection = http.client.HTTPConnection("127.0.0.1", job.port, timeout=120)
    start.wait()
    began = time.perf_counter()
    for number in range(job.uploads):
        path = job.path if job.uploads == 1 else f"{job.path}.{number}"

        def post(headers: dict[str, str], body: bytes = b"", path: str = path) -> dict[str, str]:
            connection.request("BITS_POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status} {dict(response.getheaders())}")
            return {k.lower(): v for k, v in response.getheaders()}

        ack = post(
            {
                "BITS-Packet-Type": "Create-Session",
                "BITS-Supported-Protocols": PROTOCOL,
                "Content-Length": "0",
            }
        )
        session = ack["bits-session-id"]
        offset = 0
        for view in views:
            post(
                {
                    "BITS-Packet-Type": "Fragment",
                    "BITS-Session-Id": session,
                    "Content-Range": f"bytes {offset}-{offset + len(view) - 1}/{job.size}",
                    "Content-Length": str(len(view)),
                },
                view,
            )
            offset += len(view)
        post(
            {"BITS-Packet-Type": "Close-Session", "BITS-Session-Id": session, "Content-Length": "0"}
        )
    ended = time.perf_counter()
    connection.close()
    return began, ended


def _worker(
    job: Job, start: multiprocessing.synchronize.Event, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    try:
        results.put(run_job(job, start))
    except Exception as exc:  # reported to the parent
        results.put(exc)


def run(jobs: list[Job]) -> float:
    """Run the jobs at once, one process each; return the wall time from first to last byte."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    workers = [context.Process(target=_worker, args=(job, start, results)) for job in jobs]
    for worker in workers:
        worker.start()
    time.sleep(0.2)  # every worker connected and holding its payload
    start.set()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(60)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    if errors:
        raise errors[0]
    began = min(o[0] for o in outcomes)
    ended = max(o[1] for o in outcomes)
    return ended - began


def verify(root: str, jobs: list[Job]) -> None:
    for job in jobs:
        expected = hashlib.sha256(payload(job.size, job.seed)).hexdigest()
        names = [job.path] if job.uploads == 1 else [f"{job.path}.{n}" for n in range(job.uploads)]
        for name in names:
            with open(os.path.join(root, name.lstrip("/")), "rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
            if actual != expected:
                raise AssertionError(f"{name}: wrong bytes (a fast wrong answer is a failure)")
