"""The reference model of the offset table (D2) that the property tests check the server against."""

from __future__ import annotations


def expected(received: int, total: int, first: int, length: int, short: bool) -> tuple[int, int]:
    """(status, received offset after) for one fragment of ``length`` bytes at ``first``.

    ``short`` means the body ends early (a client that disconnects).
    """
    last = first + length - 1
    if received == total:
        return 200, received
    if first > received:
        return 416, received
    if last < received:
        return 200, received
    if short:
        return 400, received
    return 200, last + 1
