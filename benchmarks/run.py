"""Run the benchmark suite: project vs baseline (and `bits-wsgi serve` vs the peer), interleaved.

    .venv/bin/python -m benchmarks.run [--quick] [--rounds N] [--only NAME ...] [--plot FILE]

Every server runs on 127.0.0.1 and is stopped by its PID. Each scenario is measured in rounds
that alternate the servers (A B A B ...), because these machines are noisy; the table gives the
median of each and the ratio of medians. Results also go to benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .load import Job, run, verify

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MiB = 1024 * 1024
GUNICORN_FLAGS = ["-k", "gthread", "--workers", "2", "--threads", "8", "--keep-alive", "30"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    root: Path
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        command = [part.format(port=self.port, root=self.root) for part in self.command]
        env = {**os.environ, "BENCH_ROOT": str(self.root), **self.env}
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)

    def clean(self) -> None:
        """Remove uploaded files between runs, keeping the running server's state folders."""
        for entry in self.root.iterdir():
            if entry.name in ("BITS-Sessions", "shared"):
                for sub in entry.iterdir():
                    if sub.name in ("Requests", "Owners", "Locks", "Replies"):
                        for item in sub.iterdir():
                            shutil.rmtree(item) if item.is_dir() else item.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def servers(base: Path) -> dict[str, Server]:
    gunicorn = str(BIN / "gunicorn")
    bind = ["--bind", "127.0.0.1:{port}"]
    serve = [str(BIN / "bits-wsgi"), "serve", "{root}", "--port", "{port}", "--session-limit", "0"]

    def server(name: str, command: list[str], **env: str) -> Server:
        return Server(name, base / name, command, env=env)

    return {
        "project": server("project", [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.apps:project"]),
        "project-nofsync": server(
            "project-nofsync",
            [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.apps:project"],
            BENCH_WITHOUT_FSYNC="1",
        ),
        "project-redis": server(
            "project-redis", [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.apps:project_redis"]
        ),
        "baseline": server(
            "baseline", [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.apps:baseline"]
        ),
        "baseline-fsync": server(
            "baseline-fsync", [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.apps:baseline_fsync"]
        ),
        "baseline-commit": server(
            "baseline-commit",
            [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.apps:baseline_commit"],
        ),
        # Durable sessions with none of the protocol's checks: the floor of the design.
        "baseline-sessions": server(
            "baseline-sessions",
            [gunicorn, *GUNICORN_FLAGS, *bind, "benchmarks.sessions_baseline:app"],
        ),
        # `bits-wsgi serve` as shipped, and on each engine it offers.
        "serve": server("serve", serve),
        # The durable baselines on serve's engine: serve's ceilings.
        "serve-baseline-fsync": server(
            "serve-baseline-fsync",
            [str(BIN / "python"), "-m", "benchmarks.engine_baseline", "{port}", "fsync"],
        ),
        "serve-baseline-commit": server(
            "serve-baseline-commit",
            [str(BIN / "python"), "-m", "benchmarks.engine_baseline", "{port}", "commit"],
        ),
        "serve-baseline-sessions": server(
            "serve-baseline-sessions",
            [str(BIN / "python"), "-m", "benchmarks.engine_baseline", "{port}", "sessions"],
        ),
        "serve-waitress": server("serve-waitress", [*serve, "--server", "waitress"]),
        "serve-gunicorn": server("serve-gunicorn", [*serve, "--server", "gunicorn"]),
        "serve-granian": server("serve-granian", [*serve, "--server", "granian"]),
        # Candidates measured with the project's app: the server, and serving models for
        # crowds of slow links (benchmarks/slow_links.py).
        "granian": server(
            "granian",
            [
                str(BIN / "granian"),
                "--interface",
                "wsgi",
                "--workers",
                "2",
                "--blocking-threads",
                "8",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--log-level",
                "warning",
                "benchmarks.apps:project",
            ],
        ),
        "waitress": server(
            "waitress",
            [
                str(BIN / "waitress-serve"),
                "--listen=127.0.0.1:{port}",
                "--threads=8",
                "--connection-limit=2000",
                "benchmarks.apps:project",
            ],
        ),
        "gevent": server(
            "gevent",
            [
                gunicorn,
                "-k",
                "gevent",
                "--workers",
                "2",
                "--worker-connections",
                "2000",
                *bind,
                "benchmarks.apps:project",
            ],
        ),
        "peer": server("peer", [sys.executable, "benchmarks/peer.py", "{root}", "{port}"]),
        # The peer's design made as durable as §10.2 asks: what durability costs that design.
        "peer-durable": server(
            "peer-durable",
            [sys.executable, "benchmarks/peer.py", "{root}", "{port}", "durable"],
        ),
    }


#: Server CPU (user + system, every process of the server) per upload, by (scenario, server).
SERVER_CPU_MS: dict[tuple[str, str], list[float]] = {}


def group_cpu_seconds(group: int) -> float:
    """User and system time of every live process in the process group (the server runs in a
    session of its own, so its group is its PID)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp; fields[11:13] are utime and stime
            total += int(fields[11]) + int(fields[12])
    return total / ticks


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    size: int
    fragment: int
    uploads: int = 1
    unit: str = "MB/s"

    def jobs(self, port: int) -> list[Job]:
        return [
            Job(
                port=port,
                path=f"/c{n}/f.bin",
                size=self.size,
                fragment=self.fragment,
                seed=n,
                uploads=self.uploads,
            )
            for n in range(self.clients)
        ]

    def measure(self, server: Server) -> float:
        jobs = self.jobs(server.port)
        assert server.process is not None
        cpu_before = group_cpu_seconds(server.process.pid)
        seconds = run(jobs)
        cpu = group_cpu_seconds(server.process.pid) - cpu_before
        SERVER_CPU_MS.setdefault((self.name, server.name), []).append(
            cpu * 1000 / (self.clients * self.uploads)
        )
        verify(str(server.root), jobs)
        server.clean()
        if self.unit == "uploads/s":
            return self.clients * self.uploads / seconds
        return self.clients * self.uploads * self.size / seconds / 1e6


def scenarios(quick: bool) -> list[Scenario]:
    scale = 4 if quick else 1
    return [
        Scenario("1 client, 256 MiB, 1 MiB fragments", 1, 256 * MiB // scale, MiB),
        Scenario("1 client, 64 MiB, 64 KiB fragments", 1, 64 * MiB // scale, 64 * 1024),
        Scenario("8 clients x 32 MiB, 1 MiB fragments", 8, 32 * MiB // scale, MiB),
        # Windows' largest fragment is about 13 MB: a dump sent as fast as BITS sends.
        Scenario("1 client, 1 GiB, 13 MiB fragments", 1, 1024 * MiB // scale, 13 * MiB),
        Scenario(
            "2000 x 4 KiB uploads (create+fragment+close)",
            8,
            4096,
            4096,
            uploads=250 // scale,
            unit="uploads/s",
        ),
    ]


def interleave(
    scenario: Scenario, a: Server, b: Server, rounds: int
) -> tuple[list[float], list[float]]:
    first, second = [], []
    for _ in range(rounds):
        first.append(scenario.measure(a))
        second.append(scenario.measure(b))
    return first, second


def disk_rate(base: Path, size: int, chunk: int) -> float:
    """Raw sequential write of the same bytes in the same chunk size, for context (MB/s)."""
    target = base / "disk.bin"
    data = os.urandom(chunk)
    began = time.perf_counter()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, size, chunk):
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - began
    target.unlink()
    return size / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller uploads, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="scenario name prefixes")
    parser.add_argument("--pairs", nargs="*", default=["project:baseline", "serve:peer"])
    parser.add_argument("--plot", default=None, help="write a PNG of throughput vs fragment size")
    parser.add_argument("--replot", default=None, help="only redraw the PNG from latest.json")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((PROJECT / "benchmarks" / "results" / "latest.json").read_text())
        sweep = {
            name: {int(k): v for k, v in points.items()} for name, points in saved["sweep"].items()
        }
        plot(sweep, Path(args.replot))
        return
    rounds = args.rounds or (2 if args.quick else 5)
    results: dict[str, object] = {
        "machine": (
            f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "date": time.strftime("%Y-%m-%d"),
        "rounds": rounds,
        "rows": [],
    }
    rows: list[dict[str, object]] = results["rows"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as scratch:
        base = Path(scratch)
        pool = servers(base)
        needed = {name for pair in args.pairs for name in pair.split(":")}
        redis_server = None
        try:
            if "project-redis" in needed:
                redis_server = start_redis(base)
                pool["project-redis"].env["BENCH_REDIS_URL"] = redis_server[1]
            for name in needed:
                pool[name].start()
            print("| scenario | A | B | A median | B median | A/B | server CPU per upload, A / B |")
            print("|---|---|---|---|---|---|---|")
            for scenario in scenarios(args.quick):
                if args.only and not any(scenario.name.startswith(p) for p in args.only):
                    continue
                for pair in args.pairs:
                    a_name, b_name = pair.split(":")
                    a, b = interleave(scenario, pool[a_name], pool[b_name], rounds)
                    ratio = statistics.median(a) / statistics.median(b)
                    row = {
                        "scenario": scenario.name,
                        "a": a_name,
                        "b": b_name,
                        "unit": scenario.unit,
                        "a_runs": a,
                        "b_runs": b,
                        "a_median": statistics.median(a),
                        "b_median": statistics.median(b),
                        "ratio": ratio,
                        "a_cpu_ms_per_upload": statistics.median(
                            SERVER_CPU_MS[(scenario.name, a_name)]
                        ),
                        "b_cpu_ms_per_upload": statistics.median(
                            SERVER_CPU_MS[(scenario.name, b_name)]
                        ),
                    }
                    rows.append(row)
                    print(
                        f"| {scenario.name} | {a_name} | {b_name} | "
                        f"{row['a_median']:.1f} {scenario.unit} | "
                        f"{row['b_median']:.1f} {scenario.unit} | {ratio:.2f} | "
                        f"server CPU per upload {row['a_cpu_ms_per_upload']:.2f} / "
                        f"{row['b_cpu_ms_per_upload']:.2f} ms |",
                        flush=True,
                    )
            if args.plot:
                sweep = fragment_sweep(pool, base, args.quick, rounds)
                results["sweep"] = sweep
                plot(sweep, Path(args.plot))
        finally:
            for server in pool.values():
                server.stop()
            if redis_server is not None:
                redis_server[0].terminate()
                redis_server[0].wait(20)
    out = PROJECT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    text = json.dumps(results, indent=2)
    (out / "latest.json").write_text(text)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)


def start_redis(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port, persistence as Debian ships it (no fsync)."""
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--dir",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def fragment_sweep(
    pool: dict[str, Server], base: Path, quick: bool, rounds: int
) -> dict[str, dict[int, float]]:
    size = (16 if quick else 64) * MiB
    fragments = [64 * 1024, 256 * 1024, MiB, 4 * MiB, 13 * MiB]
    sweep: dict[str, dict[int, float]] = {"project": {}, "baseline": {}, "disk": {}}
    for fragment in fragments:
        scenario = Scenario(f"sweep {fragment}", 1, size, fragment)
        a, b = interleave(scenario, pool["project"], pool["baseline"], rounds)
        sweep["project"][fragment] = statistics.median(a)
        sweep["baseline"][fragment] = statistics.median(b)
        sweep["disk"][fragment] = statistics.median(
            [disk_rate(base, size, fragment) for _ in range(rounds)]
        )
        print(
            f"sweep {fragment // 1024} KiB: project {sweep['project'][fragment]:.0f}, "
            f"baseline {sweep['baseline'][fragment]:.0f}, disk {sweep['disk'][fragment]:.0f} MB/s",
            flush=True,
        )
    return sweep


def plot(sweep: dict[str, dict[int, float]], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    labels = {"disk": "disk (same writes, page cache, no fsync)"}
    for name, points in sweep.items():
        sizes = sorted(points)
        axis.plot(
            [s / 1024 for s in sizes],
            [points[s] for s in sizes],
            marker="o",
            label=labels.get(name, name),
        )
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("fragment size (KiB)")
    axis.set_ylabel("throughput (MB/s)")
    axis.set_title("One client, sequential fragments, 127.0.0.1")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
