"""A real redis-server on 127.0.0.1, started for the tests and stopped by its PID."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import running


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs redis-server (.ci/run); it is missing")
        pytest.skip("redis-server is not installed here (apt-get install redis-server)")
    folder: Path = tmp_path_factory.mktemp("redis")

    def command(port: int) -> list[str]:
        return [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ]

    with running(command, "redis-server", timeout=20) as port:
        yield f"redis://127.0.0.1:{port}/0"
