"""pytest-benchmark micro-benchmarks of the pure protocol core (run by `make bench`).

Not collected by `make test` (its testpaths are tests/); run with
``.venv/bin/pytest benchmarks/test_micro.py --benchmark-only``.
"""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import Headers

from bits_wsgi.protocol import FragmentRange, parse, parse_fragment_range
from bits_wsgi.session import plan_fragment

FRAGMENT = Headers(
    {
        "BITS-Packet-Type": "Fragment",
        "BITS-Session-Id": "{A0FF5911-4144-45B3-BF27-27AFC8EC8A67}",
        "Content-Range": "bytes 1048576-2097151/268435456",
        "Content-Length": "1048576",
        "User-Agent": "Microsoft BITS/7.8",
        "Host": "uploads.example",
    }
)


def test_parse_fragment_packet(benchmark: Any) -> None:
    packet = benchmark(parse, FRAGMENT)
    assert packet.range.first == 1048576


def test_parse_content_range(benchmark: Any) -> None:
    parsed = benchmark(parse_fragment_range, "bytes 1048576-2097151/268435456")
    assert parsed.total == 268435456


def test_plan_in_order_fragment(benchmark: Any) -> None:
    fragment = FragmentRange(1048576, 2097151, 268435456)
    plan = benchmark(plan_fragment, 1048576, 268435456, fragment, None)
    assert plan.received == 2097152


def test_plan_overlapping_fragment(benchmark: Any) -> None:
    fragment = FragmentRange(1000000, 2097151, 268435456)
    plan = benchmark(plan_fragment, 1048576, 268435456, fragment, None)
    assert plan.skip == 48576
