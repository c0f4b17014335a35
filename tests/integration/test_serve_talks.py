"""`bits-wsgi serve` as an operator meets it: the banner, words instead of tracebacks for a bad
start, and a page at / that says what the server is."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ..support.ports import free_port
from .helpers import PROJECT, bits_serve


def _serve_fails(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """Run `bits-wsgi serve ARGS` expecting it to refuse to start."""
    command = [
        sys.executable,
        "-c",
        code + "from bits_wsgi.cli import main; raise SystemExit(main())",
    ]
    return subprocess.run(
        [*command, "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT,
    )


def _one_line_in_words(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bits-wsgi: ")
    return lines[0]


def test_a_root_that_is_a_file_is_refused_in_words(tmp_path: Path) -> None:
    a_file = tmp_path / "uploads"
    a_file.write_text("not a folder")
    line = _one_line_in_words(_serve_fails(str(a_file), "--port", str(free_port())))
    assert str(a_file) in line and "not a directory" in line


def test_a_port_in_use_is_refused_in_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_line_in_words(_serve_fails(str(tmp_path / "up"), "--port", str(port)))
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_a_missing_extra_is_named(tmp_path: Path) -> None:
    hide_redis = "import sys; sys.modules['redis'] = None\n"
    result = _serve_fails(
        str(tmp_path / "up"),
        "--backend",
        "redis://127.0.0.1:6379/0",
        "--data-dir",
        str(tmp_path / "shared"),
        code=hide_redis,
    )
    assert "pip install 'bits-wsgi[redis]'" in _one_line_in_words(result)


def test_the_banner_says_where_uploads_go_and_who_may_send(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    with bits_serve(root, tmp_path / "serve.log", "--user", "alice:secret") as server:
        banner = [line for line in server.log.read_text().splitlines() if "bits-wsgi serve" in line]
    assert banner, server.log.read_text()
    line = banner[0]
    assert f"http://127.0.0.1:{server.port}/" in line
    assert str(root.resolve()) in line
    assert "prefix /" in line
    assert "Basic authentication (1 user)" in line
    assert "backend: files" in line


def test_the_banner_says_when_anyone_may_upload(tmp_path: Path) -> None:
    with bits_serve(tmp_path / "uploads", tmp_path / "serve.log") as server:
        text = server.log.read_text()
    assert "no authentication" in next(
        line for line in text.splitlines() if "bits-wsgi serve" in line
    )


@pytest.mark.parametrize("path", ["/", "/index.html"])
def test_a_browser_at_the_root_learns_what_this_server_is(tmp_path: Path, path: str) -> None:
    with bits_serve(tmp_path / "uploads", tmp_path / "serve.log") as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
        connection.request("GET", "/anything-else")
        other = connection.getresponse()
        other.read()
        connection.close()
    if path == "/":
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/html")
        assert "BITS upload server" in body and "BITS_POST" in body
    else:
        assert response.status == 404
    assert other.status == 404


def test_passwd_then_users_file_keeps_passwords_off_the_command_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    for name, password in (("host1", "s3cret"), ("host2", "other"), ("host1", "changed")):
        done = subprocess.run(
            [sys.executable, "-m", "bits_wsgi", "passwd", str(users), name],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "password of" in done.stderr
    text = users.read_text()
    assert "s3cret" not in text and "changed" not in text
    assert [line.partition(":")[0] for line in text.splitlines()] == ["host2", "host1"]
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 100_000)
    with bits_serve(tmp_path / "up", tmp_path / "serve.log", "--users-file", str(users)) as server:
        url = f"http://127.0.0.1:{server.port}/f.bin"
        upload = [sys.executable, "-m", "bits_wsgi", "upload", str(source), url, "--quiet"]
        state = ["--state-file", str(tmp_path / "state.json")]
        refused = subprocess.run(
            [*upload, *state, "--user", "host1:s3cret"], capture_output=True, text=True, timeout=60
        )
        accepted = subprocess.run(
            [*upload, *state, "--user", "host1:changed"], capture_output=True, text=True, timeout=60
        )
        banner = server.log.read_text()
    assert refused.returncode == 1 and "401" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert (tmp_path / "up" / "f.bin").read_bytes() == source.read_bytes()
    assert "Basic authentication (2 users)" in banner


def test_app_is_found_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "site_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from the current directory']\n"
    )
    port = free_port()
    # the installed command, as an operator runs it: not `python -m`, which puts the current
    # directory on the path by itself
    command = [str(Path(sys.executable).parent / "bits-wsgi"), "serve", str(tmp_path / "up")]
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--app", "site_app:app"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        from ..support.ports import wait_for_port

        wait_for_port(port, process)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/hello")
        assert connection.getresponse().read() == b"from the current directory"
        connection.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
