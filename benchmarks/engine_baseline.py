"""The durable baseline on the engine ``bits-wsgi serve`` runs: the ceiling of ``serve``.

    BENCH_ROOT=/tmp/root .venv/bin/python -m benchmarks.engine_baseline PORT fsync|commit|sessions

``benchmarks.apps:baseline_fsync`` (read the body, write it at its offset, fsync the file with
its last byte, answer a fixed Ack), ``baseline_commit`` (the same, written to a file of its
own that is then linked into place as §10.2 asks) or ``sessions_baseline.app`` (that, with
durable sessions and none of the protocol's checks: the floor of the design), served exactly
as ``serve`` serves the project: the same worker processes, threads and read deadlines
(``bits_wsgi/cli/_engine.py``, the builtin server).
What ``serve`` loses against the peer design beyond this is the project's own work; what this
loses against the peer is the engine's and the fsync's.
"""

from __future__ import annotations

import logging
import sys

from bits_wsgi.cli._engine import serve

from .apps import baseline_commit, baseline_fsync
from .sessions_baseline import app as baseline_sessions

APPS = {"fsync": baseline_fsync, "commit": baseline_commit, "sessions": baseline_sessions}

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    serve(
        APPS[sys.argv[2]],
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=2,
        threads=512,
        largest_body=16 * 1024 * 1024,
    )
