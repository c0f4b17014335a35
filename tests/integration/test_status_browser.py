"""The status page in a real headless browser (Debian's chromium and chromium-driver, selenium):
the README's `make serve`, an upload from `bits-wsgi upload` over a slow link, and the page
showing its progress move; then the same on `serve` over TLS. The screenshot is kept in
test-artifacts/ (docs/status-page.png is one of them)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support.ports import free_port
from ..support.tls import Authority
from .helpers import PROJECT, background, bits_serve

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ARTIFACTS = PROJECT / "test-artifacts"


@contextlib.contextmanager
def browser(*arguments: str) -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs chromium and chromium-driver (.ci/run); they are missing")
        pytest.skip("Debian's chromium and chromium-driver are not installed here")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,720",
        *arguments,
    ):
        options.add_argument(argument)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    try:
        yield session
    finally:
        session.quit()


class SlowLink:
    """A loopback relay that carries the client's bytes to the server at ``rate`` bytes/s."""

    def __init__(self, upstream: int, rate: int) -> None:
        self.upstream, self.rate = upstream, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as server:
            answers = threading.Thread(target=self._pipe, args=(server, client, False))
            answers.start()
            self._pipe(client, server, True)
            answers.join(60)

    def _pipe(self, source: socket.socket, target: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(16384):
                target.sendall(data)
                if slow:
                    time.sleep(len(data) / self.rate)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def _percent(page: Any) -> float | None:
    from selenium.webdriver.common.by import By

    cells = page.find_elements(By.CSS_SELECTOR, "tr[data-session] td.percent")
    if not cells:
        return None
    text = cells[0].text.strip().rstrip("%")
    return float(text) if text.replace(".", "", 1).isdigit() else None


def _watch(page: Any, url: str) -> list[float]:
    """The percents the page shows for the upload in progress, until it has shown two."""
    page.get(url)
    seen: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(seen)) < 2:
        time.sleep(0.5)  # the page reloads itself every 2 s
        percent = _percent(page)
        if percent is not None and 0 < percent < 100:
            seen.append(percent)
    return seen


def _slow_upload(source: Path, url: str, state: Path, *options: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bits_wsgi", "upload", str(source), url]
    return subprocess.Popen(
        [*command, "--state-file", str(state), "--quiet", *options],
        stderr=subprocess.PIPE,
        text=True,
    )


def make_serve(upload_dir: Path, port: int) -> contextlib.AbstractContextManager[None]:
    """The README's `make serve`, on a free port."""
    command = ["make", "serve", f"PORT={port}", f"UPLOAD_DIR={upload_dir}"]
    return background(command, PROJECT, port, upload_dir.parent / "make-serve.log")


def _upload_while_watching(
    source: Path,
    server_port: int,
    upload_url: str,
    page_url: str,
    screenshot: str,
    *,
    browser_arguments: tuple[str, ...] = (),
    upload_options: tuple[str, ...] = (),
) -> str:
    """Upload ``source`` through a 2 MiB/s relay to ``server_port`` while a browser watches
    ``page_url``; assert the page's percent moved forward and the upload succeeded; return the
    page as the browser last saw it."""
    link = SlowLink(server_port, rate=2 * MiB)
    state = source.with_name(source.name + ".state.json")
    client = _slow_upload(source, upload_url.format(port=link.port), state, *upload_options)
    try:
        with browser(*browser_arguments) as page:
            seen = _watch(page, page_url)
            ARTIFACTS.mkdir(exist_ok=True)
            page.save_screenshot(str(ARTIFACTS / screenshot))
            assert len(set(seen)) >= 2 and seen == sorted(seen), seen  # it moves, forward
            shown: str = page.page_source
        _, errors = client.communicate(timeout=120)
        assert client.returncode == 0, errors
        return shown
    finally:
        with contextlib.suppress(ProcessLookupError):
            client.kill()
        link.close()


def test_make_serve_then_a_browser_sees_an_upload_progress(tmp_path: Path) -> None:
    source = tmp_path / "crash.dmp"
    source.write_bytes(os.urandom(12 * MiB))
    root = tmp_path / "uploads"
    port = free_port()
    with make_serve(root, port):
        shown = _upload_while_watching(
            source,
            port,
            "http://127.0.0.1:{port}/dumps/crash.dmp",
            f"http://127.0.0.1:{port}/bits-status/",
            "status-page.png",
        )
    assert "dumps/crash.dmp" in shown
    stored = (root / "dumps" / "crash.dmp").read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(source.read_bytes()).digest()


def test_the_status_page_over_tls_sees_an_upload_progress(tmp_path: Path) -> None:
    ca = Authority(tmp_path)
    issued = ca.issue("localhost", server=True)
    tls = ["--certfile", str(issued.certificate), "--keyfile", str(issued.key)]
    source = tmp_path / "log.bin"
    source.write_bytes(os.urandom(12 * MiB))
    root = tmp_path / "up"
    with bits_serve(root, tmp_path / "serve.log", *tls, "--status-path", "/s/") as server:
        # TLS passes through the relay untouched; the browser does not know the test's
        # authority, so it is told to go on: this test is of the page over TLS
        _upload_while_watching(
            source,
            server.port,
            "https://127.0.0.1:{port}/logs/log.bin",
            f"https://127.0.0.1:{server.port}/s/",
            "status-page-tls.png",
            browser_arguments=("--ignore-certificate-errors",),
            upload_options=("--cacert", str(ca.pem)),
        )
    assert (root / "logs" / "log.bin").read_bytes() == source.read_bytes()
