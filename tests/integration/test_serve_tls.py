"""`bits-wsgi serve` over TLS, against a certificate authority made for the test: every engine
serves HTTPS; waitress and gunicorn take a client certificate as the identity; the client trusts
an internal authority with --cacert and refuses what does not verify, in words."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..support.sessions import records
from ..support.tls import Authority
from .helpers import bits_serve

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _upload(
    source: Path, url: str, tmp_path: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    state = ["--state-file", str(tmp_path / f"state-{os.urandom(4).hex()}.json")]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bits_wsgi",
            "upload",
            str(source),
            url,
            "--quiet",
            *state,
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "dump.bin"
    path.write_bytes(os.urandom(3 * MiB + 77))
    return path


@pytest.mark.parametrize("engine", ["waitress", "gunicorn", "granian"])
def test_an_upload_over_tls_arrives_byte_identical(
    tmp_path: Path, source: Path, engine: str
) -> None:
    ca = Authority(tmp_path)
    server_cert = ca.issue("localhost", server=True)
    tls = ["--certfile", str(server_cert.certificate), "--keyfile", str(server_cert.key)]
    root = tmp_path / "up"
    with bits_serve(root, tmp_path / "serve.log", *tls, server=engine) as server:
        url = f"https://127.0.0.1:{server.port}/dumps/dump.bin"
        refused = _upload(source, url, tmp_path, "--retries", "0")
        done = _upload(source, url, tmp_path, "--cacert", str(ca.pem))
        banner = server.log.read_text()
    assert refused.returncode == 1
    assert "does not verify" in refused.stderr and "--cacert" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256((root / "dumps" / "dump.bin").read_bytes()).hexdigest() == digest
    assert f"https://127.0.0.1:{server.port}/" in banner


@pytest.mark.parametrize("engine", ["waitress", "gunicorn"])
def test_a_client_certificate_is_the_identity_that_owns_the_session(
    tmp_path: Path, source: Path, engine: str
) -> None:
    ca = Authority(tmp_path)
    server_cert = ca.issue("localhost", server=True)
    machine = ca.issue("HOST42", server=False)
    (tmp_path / "other").mkdir()
    stranger = Authority(tmp_path / "other").issue("HOST43", server=False)  # not our authority
    tls = [
        "--certfile",
        str(server_cert.certificate),
        "--keyfile",
        str(server_cert.key),
        "--client-ca",
        str(ca.pem),
    ]
    root = tmp_path / "up"
    with bits_serve(root, tmp_path / "serve.log", *tls, server=engine) as server:
        url = f"https://127.0.0.1:{server.port}/dump.bin"
        trust = ["--cacert", str(ca.pem), "--retries", "0"]
        without = _upload(source, url, tmp_path, *trust)
        foreign = _upload(
            source,
            url,
            tmp_path,
            *trust,
            "--cert",
            str(stranger.certificate),
            "--key",
            str(stranger.key),
        )
        done = _upload(
            source,
            url,
            tmp_path,
            *trust,
            "--cert",
            str(machine.certificate),
            "--key",
            str(machine.key),
        )
        log = server.log.read_text()
    assert without.returncode == 1 and foreign.returncode == 1
    assert done.returncode == 0, done.stderr
    assert (root / "dump.bin").read_bytes() == source.read_bytes()
    assert [record["owner"] for record in records(root)] == ["HOST42"]
    assert "client certificates from" in log


def test_a_connection_that_never_completes_its_handshake_is_dropped(tmp_path: Path) -> None:
    """§9.3 on a TLS port: a connection that sends no ClientHello holds a socket until the head
    timeout, not until the idle timeout (120 s), and others are served meanwhile."""
    import socket
    import time

    from bits_wsgi.cli._waitress import HEAD_TIMEOUT, IDLE_TIMEOUT

    assert HEAD_TIMEOUT + 10 < IDLE_TIMEOUT  # so the timing below tells the two apart
    ca = Authority(tmp_path)
    issued = ca.issue("localhost", server=True)
    tls = ["--certfile", str(issued.certificate), "--keyfile", str(issued.key)]
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(100_000))
    log = tmp_path / "serve.log"
    with bits_serve(tmp_path / "up", log, *tls, "--workers", "1") as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        began = time.monotonic()
        url = f"https://127.0.0.1:{server.port}/f.bin"
        done = _upload(source, url, tmp_path, "--cacert", str(ca.pem))
        assert done.returncode == 0, done.stderr
        silent.settimeout(HEAD_TIMEOUT + 10)
        try:
            assert silent.recv(1) == b""  # closed by the server (a timeout would raise)
        finally:
            silent.close()
        assert time.monotonic() - began < HEAD_TIMEOUT + 10
    assert "TLS handshake incomplete" in log.read_text()
