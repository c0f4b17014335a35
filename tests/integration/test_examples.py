"""The examples, run as the docs say: under gunicorn (and nginx), uploaded to for real."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bits_wsgi.client import UploadClient

from ..support.ports import free_port
from ..support.tls import Authority
from .helpers import Server

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
EXAMPLES = PROJECT / "examples"
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
MiB = 1024 * 1024


def gunicorn(
    tmp_path: Path, app: str, cwd: Path, config: str, env: dict[str, str] | None = None
) -> Server:
    port = free_port()
    return Server(
        [GUNICORN, "-c", config, "--bind", f"127.0.0.1:{port}", "--workers", "2", app],
        port,
        tmp_path / "gunicorn.log",
        cwd=cwd,
        env={"BITS_UPLOAD_DIR": str(tmp_path / "uploads"), **(env or {})},
    )


@pytest.fixture(params=["flask", "django"])
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    if request.param == "flask":
        server = gunicorn(tmp_path, "examples.flask_app:app", PROJECT, "examples/gunicorn.conf.py")
        stored = tmp_path / "uploads" / "files"
    else:
        server = gunicorn(
            tmp_path,
            "django_site.wsgi:application",
            EXAMPLES / "django_site",
            "../gunicorn.conf.py",
        )
        stored = tmp_path / "uploads"
    try:
        yield server, stored
    finally:
        assert server.stop() == 0


def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def upload_and_check(port: int, stored: Path, tmp_path: Path, size: int) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(size))
    UploadClient(f"http://127.0.0.1:{port}/uploads/dir/file.bin").upload(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256((stored / "dir" / "file.bin").read_bytes()).hexdigest() == digest


def test_example_under_gunicorn(example: tuple[Server, Path], tmp_path: Path) -> None:
    server, stored = example
    upload_and_check(server.port, stored, tmp_path, 5 * MiB + 3)
    # the one line per packet appears under gunicorn too (examples/gunicorn.conf.py)
    lines = server.log.read_text().splitlines()
    for packet in ("Create-Session", "Fragment", "Close-Session"):
        assert any(f"packet={packet} " in line and " status=200 " in line for line in lines), (
            packet,
            lines[-20:],
        )
    status, page = request(server.port, "GET", "/")
    assert status == 200 and b"answers here" in page
    payload = os.urandom(100_000)
    assert request(server.port, "POST", "/echo", payload) == (200, payload)


def test_the_packet_lines_as_json(tmp_path: Path) -> None:
    server = gunicorn(
        tmp_path,
        "examples.flask_app:app",
        PROJECT,
        "examples/gunicorn.conf.py",
        env={"BITS_LOG_FORMAT": "json"},
    )
    try:
        upload_and_check(server.port, tmp_path / "uploads" / "files", tmp_path, 3 * MiB)
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log.read_text().splitlines()]
    fragments = [r for r in records if r.get("packet") == "Fragment"]
    assert fragments and all(r["status"] == 200 and r["logger"] == "bits_wsgi" for r in fragments)
    assert fragments[-1]["received"] == 3 * MiB
    assert {"time", "level", "message", "session", "destination", "duration"} <= set(fragments[0])


def test_nginx_in_front_of_the_flask_example(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs nginx (.ci/run); it is missing")
        pytest.skip("Debian's nginx is not installed here (apt-get install nginx)")
    app = gunicorn(tmp_path, "examples.flask_app:app", PROJECT, "examples/gunicorn.conf.py")
    port = free_port()
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    site = (EXAMPLES / "nginx.conf").read_text()
    site = site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{app.port};")
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    ca = Authority(tmp_path)
    server_cert = ca.issue("localhost", server=True)
    tls_port = free_port()
    site = site.replace("listen 8443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
    site = site.replace("/etc/nginx/bits/server.pem", str(server_cert.certificate))
    site = site.replace("/etc/nginx/bits/server.key", str(server_cert.key))
    (prefix / "bits.conf").write_text(site)
    (prefix / "nginx.conf").write_text(
        f"""
        daemon off;
        pid {prefix}/nginx.pid;
        error_log {prefix}/logs/error.log;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            include {prefix}/bits.conf;
        }}
        """
    )
    proxy = Server(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], port, prefix / "out.log"
    )
    try:
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(30 * MiB))
        client = UploadClient(
            f"http://127.0.0.1:{port}/uploads/big.bin",
            fragment_size=13 * 1000 * 1000,
            max_fragment_size=13 * 1000 * 1000,
        )
        client.upload(source)
        assert client.fragment_size == 13 * 1000 * 1000  # nginx let 13 MB fragments through
        # and the same over the example's TLS listener, trusting the test's authority
        secure = UploadClient(
            f"https://127.0.0.1:{tls_port}/uploads/secure.bin",
            cafile=ca.pem,
            fragment_size=13 * 1000 * 1000,
        )
        secure.upload(source)
        assert (tmp_path / "uploads" / "files" / "secure.bin").read_bytes() == source.read_bytes()
        stored = tmp_path / "uploads" / "files" / "big.bin"
        assert (
            hashlib.sha256(stored.read_bytes()).digest()
            == hashlib.sha256(source.read_bytes()).digest()
        )
        assert request(port, "GET", "/")[0] == 200
    finally:
        proxy.stop()
        app.stop()


def test_gunicorn_config_is_valid() -> None:
    result = subprocess.run(
        [GUNICORN, "-c", "examples/gunicorn.conf.py", "--check-config", "examples.flask_app:app"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
