from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import RawBits


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while RawBits.opened:
        RawBits.opened.pop().connection.close()
