"""Fixtures every test module may use, loaded by ``pytest_plugins`` in tests/conftest.py."""

from .redis import redis_url
from .s3 import s3_endpoint
from .server_client import make_server

__all__ = ["make_server", "redis_url", "s3_endpoint"]
