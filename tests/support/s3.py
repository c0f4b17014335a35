"""A real S3 endpoint on 127.0.0.1 (moto_server), started for the tests and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .servers import running


def s3_environment(endpoint: str) -> dict[str, str]:
    """What every process that talks to the test endpoint needs in its environment."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the test extra installs moto[server]; moto_server is missing")
        pytest.skip("moto_server is not installed here (pip install 'moto[server]')")
    with running(lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)], "moto_server") as port:
        yield f"http://127.0.0.1:{port}"


def s3_client(endpoint: str) -> Any:
    import boto3

    environment = s3_environment(endpoint)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        region_name=environment["AWS_DEFAULT_REGION"],
    )


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the endpoint, so tests never see each other's objects."""
    name = f"bits-{uuid.uuid4().hex[:20]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name
