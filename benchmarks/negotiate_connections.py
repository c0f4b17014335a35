"""What connections that authenticate with Kerberos and leave cost `serve --auth negotiate`.

    .venv/bin/python -m benchmarks.negotiate_connections [--connections 10000] \\
        [--server waitress|gunicorn]

Makes a MIT Kerberos realm on 127.0.0.1 (Debian's krb5-kdc, through the test suite's k5test
helper), starts `bits-wsgi serve --auth negotiate` with one worker, and opens CONNECTIONS
connections one after another, each of which authenticates on a Ping with a ticket of its own
(a fresh authenticator: the server's replay cache refuses a reused one), sends a second Ping
without Authorization on the same connection (accepted only because the identity is the
connection's), and closes. Prints the worker's RSS (VmRSS) and its open descriptors at the start
and after every tenth of the connections: connection state that outlived its connection would
grow both.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.kerberos import kerberos_realm
from tests.support.ports import free_port, wait_for_port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def worker_of(master: int) -> int:
    for _ in range(600):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == master:
                    return int(entry.name)
        time.sleep(0.05)
    raise RuntimeError("no worker")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.negotiate_connections")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--server", default="waitress", choices=["waitress", "gunicorn"])
    args = parser.parse_args()
    import spnego

    realms = kerberos_realm()
    realm = next(realms)
    ccache = realm.principal("fleet")
    os.environ.update(realm.client_env(ccache))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bits-negotiate-") as scratch:
        env = {key: value for key, value in realm.env.items() if key != "KRB5CCNAME"}
        command = [sys.executable, "-m", "bits_wsgi", "serve", f"{scratch}/root"]
        command += ["--port", str(port), "--workers", "1", "--server", args.server]
        command += ["--auth", "negotiate", "--keytab", str(realm.keytab), "--log-level", "warning"]
        server = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(port, server)
            worker = worker_of(server.pid)
            began = time.perf_counter()
            step = max(1, args.connections // 10)
            print(
                f"{0:>6} connections: RSS {rss_kib(worker) / 1024:.1f} MiB, "
                f"{len(os.listdir(f'/proc/{worker}/fd'))} descriptors"
            )
            for number in range(1, args.connections + 1):
                context = spnego.client(hostname="localhost", service="HTTP", protocol="kerberos")
                token = "Negotiate " + base64.b64encode(context.step()).decode()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                for headers in (
                    {"BITS-Packet-Type": "Ping", "Authorization": token},
                    {"BITS-Packet-Type": "Ping"},  # no Authorization: the connection's identity
                ):
                    connection.request(
                        "BITS_POST", f"/c/{number}.bin", headers={**headers, "Content-Length": "0"}
                    )
                    response = connection.getresponse()
                    response.read()
                    if response.status != 200:
                        raise RuntimeError(f"connection {number}: {response.status}")
                connection.close()
                if number % step == 0:
                    time.sleep(0.2)  # the server notices the closes
                    print(
                        f"{number:>6} connections: RSS {rss_kib(worker) / 1024:.1f} MiB, "
                        f"{len(os.listdir(f'/proc/{worker}/fd'))} descriptors"
                    )
            seconds = time.perf_counter() - began
            print(f"{args.connections / seconds:.0f} authenticated connections/s")
        finally:
            server.terminate()
            server.wait(60)
            realms.close()


if __name__ == "__main__":
    main()
