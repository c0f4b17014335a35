"""Prometheus metrics (``pip install 'bits-wsgi[metrics]'``), served on a path the operator picks.

::

    from bits_wsgi.wsgi.metrics import PrometheusMetrics

    app = BITSMiddleware(app, "/srv/uploads", metrics=PrometheusMetrics(), metrics_path="/metrics")

With several worker processes (gunicorn, granian), set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the application is built: every worker then writes its counts there and the
metrics path reports their sum (``bits-wsgi serve --metrics-path`` does this by itself).

Counters and the histogram (all prefixed ``bits_``):

- ``sessions_total{event}``: created, closed (the job finished: the upload is done), cancelled,
  expired
- ``packets_total{packet,status}``: every BITS packet answered
- ``fragment_body_bytes_total``: bytes of fragment bodies answered 200
- ``range_mismatches_total``: 416 answers (a client and the server disagreed on the offset)
- ``errors_total{code}``: error Acks by BITS error code (HRESULT), 416s aside
- ``fragment_seconds``: time from a fragment's arrival to its Ack

Gauges, read when the metrics are: ``disk_free_bytes{directory}``, the least free space of the
filesystems a directory's uploads fill, and ``disk_floor_bytes{directory}``, its
``min_free_disk`` (new sessions get 503 below it), where one is set; ``quota_bytes_per_day``
and ``quota_identities_reached{directory}`` (identities whose day is used up), where a quota is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from ..events import Events, SessionEvent
from .observe import PacketRecord


class FreeSpace(Protocol):
    """What the disk gauges read (``server.disk_floor.DiskFloor``)."""

    @property
    def minimum(self) -> int | None: ...

    def free(self) -> int | None: ...


class QuotaUse(Protocol):
    """What the quota gauges read (``server.quotas.Quotas``)."""

    @property
    def quota(self) -> int: ...

    def identities_at_quota(self) -> int: ...


#: From a 64 KiB fragment on loopback to a 13 MB one on a slow link.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SESSION_EVENTS = {
    "session_created": "created",
    "session_closed": "closed",
    "session_cancelled": "cancelled",
    "session_expired": "expired",
}


class PrometheusMetrics:
    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.sessions = Counter(
            "bits_sessions", "BITS sessions by event", ["event"], registry=self.registry
        )
        self.packets = Counter(
            "bits_packets", "BITS packets answered", ["packet", "status"], registry=self.registry
        )
        self.body_bytes = Counter(
            "bits_fragment_body_bytes",
            "Bytes of fragment bodies answered 200",
            registry=self.registry,
        )
        self.range_mismatches = Counter(
            "bits_range_mismatches", "416 answers to fragments", registry=self.registry
        )
        self.errors = Counter(
            "bits_errors", "Error Acks by BITS error code", ["code"], registry=self.registry
        )
        self._disks = _DiskCollector()
        self.registry.register(self._disks)
        self.fragment_seconds = Histogram(
            "bits_fragment_seconds",
            "Time from a fragment's arrival to its Ack",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch_disk(self, directory: str, floor: FreeSpace) -> None:
        """Report ``floor``'s free space (and the floor) for the directory at that prefix."""
        self._disks.watched.append((directory, floor))

    def watch_quota(self, directory: str, quotas: QuotaUse) -> None:
        """Report ``quota_bytes_per_day`` and who reached it today, for ``directory``."""
        self._disks.quotas.append((directory, quotas))

    def attach(self, events: Events) -> None:
        """Count session events (never ``upload_complete``, whose hooks cost a sha256)."""
        for kind in _SESSION_EVENTS:
            events.register(kind, self._session_event)  # type: ignore[arg-type]

    def _session_event(self, event: SessionEvent) -> None:
        self.sessions.labels(event=_SESSION_EVENTS[event.kind]).inc()

    def observe_packet(self, record: PacketRecord) -> None:
        packet = record.packet if record.packet in _PACKETS else "other"
        self.packets.labels(packet=packet, status=str(record.status)).inc()
        if record.code and record.status != 416:  # a 416 is a resync, counted below
            self.errors.labels(code=record.code).inc()
        if packet == "Fragment":
            self.fragment_seconds.observe(record.duration)
            if record.status == 200:
                self.body_bytes.inc(record.body_bytes)
            elif record.status == 416:
                self.range_mismatches.inc()

    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The exposition: this registry, or every worker's counts in multiprocess mode."""
        from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess

        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self._disks)  # read here and now, not summed over workers
        app = make_wsgi_app(registry)
        result: Iterable[bytes] = app(environ, start_response)
        return result


#: Packet types as sent; anything else is counted as "other", so labels stay few.
_PACKETS = frozenset(["Ping", "Create-Session", "Fragment", "Close-Session", "Cancel-Session"])


class _DiskCollector:
    """The disk and quota gauges, computed when the metrics are read (a prometheus_client
    collector)."""

    def __init__(self) -> None:
        self.watched: list[tuple[str, FreeSpace]] = []
        self.quotas: list[tuple[str, QuotaUse]] = []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        free = GaugeMetricFamily(
            "bits_disk_free_bytes", "Free space for a directory's uploads", labels=["directory"]
        )
        floor = GaugeMetricFamily(
            "bits_disk_floor_bytes",
            "min_free_disk: below it new sessions get 503",
            labels=["directory"],
        )
        for directory, disk in self.watched:
            available = disk.free()
            if available is not None:
                free.add_metric([directory], available)
            if disk.minimum is not None:
                floor.add_metric([directory], disk.minimum)
        yield free
        yield floor
        quota = GaugeMetricFamily(
            "bits_quota_bytes_per_day", "quota_bytes_per_day per identity", labels=["directory"]
        )
        reached = GaugeMetricFamily(
            "bits_quota_identities_reached",
            "identities that used up today's quota (their packets get 503 until tomorrow)",
            labels=["directory"],
        )
        for directory, use in self.quotas:
            quota.add_metric([directory], use.quota)
            reached.add_metric([directory], use.identities_at_quota())
        yield quota
        yield reached

    def describe(self) -> Iterator[Any]:
        return iter(())
