"""What an operator reads: one log line per packet, and Prometheus metrics on a chosen path."""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from pathlib import Path

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families

from bits_wsgi import BITSMiddleware
from bits_wsgi.wsgi.metrics import PrometheusMetrics
from bits_wsgi.wsgi.observe import PacketRecord

from .conftest import BitsClient, fallback_app


def fields(line: str) -> dict[str, str]:
    """A log line's key=value pairs; quoted values are JSON strings (shlex reads them back)."""
    return dict(part.split("=", 1) for part in shlex.split(line))


def packet_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "bits")]


def test_each_packet_is_one_structured_line(
    upload_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bits_wsgi")
    client = BitsClient(
        BITSMiddleware(fallback_app, upload_dir, identity=lambda environ: "alice@corp"),
        path="/dumps/crash 1.dmp",
    )
    client.create()
    client.fragment(b"abc", 0, 9)
    client.fragment(b"xyz", 6, 9)  # a gap: 416
    lines = packet_lines(caplog)
    assert [fields(r.getMessage())["packet"] for r in lines] == [
        "Create-Session",
        "Fragment",
        "Fragment",
    ]
    fragment = fields(lines[1].getMessage())
    assert fragment["session"] == client.session_id
    assert fragment["identity"] == "alice@corp"
    assert fragment["range"] == "bytes 0-2/9"
    assert fragment["dest"] == "dumps/crash 1.dmp"
    assert fragment["status"] == "200" and fragment["received"] == "3"
    assert fragment["bytes"] == "3" and re.fullmatch(r"\d+\.\d", fragment["ms"])
    assert "code" not in fragment
    refused = fields(lines[2].getMessage())
    assert (refused["status"], refused["code"], refused["received"]) == ("416", "0x00000000", "3")
    structured = lines[1].bits  # type: ignore[attr-defined]
    assert structured["identity"] == "alice@corp" and structured["status"] == 200


def test_client_text_cannot_forge_a_field_or_a_line() -> None:
    forged = PacketRecord(
        remote="10.0.0.1",
        session='x status=200 identity=admin "',
        identity="mallory\nstatus=200",
        packet="Fragment",
        range="bytes 0-1/2\r\nfake line",
        destination="a b",
        status=403,
        code="0x80070005",
        received=None,
        body_bytes=2,
        duration=0.001,
    )
    line = forged.message()
    assert "\n" not in line and "\r" not in line
    parsed = fields(line.replace("\\n", "<nl>").replace("\\r", "<cr>"))
    assert parsed["status"] == "403"
    assert parsed["identity"] == "mallory<nl>status=200"
    assert parsed["session"] == 'x status=200 identity=admin "'


def _metrics(app: object, path: str = "/-/metrics") -> dict[str, float]:
    response = webtest.TestApp(app).get(path)
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_sessions_bytes_416s_errors_and_latency(upload_dir: Path) -> None:
    app = BITSMiddleware(
        fallback_app, upload_dir, metrics=PrometheusMetrics(), metrics_path="/-/metrics"
    )
    done = BitsClient(app, path="/done.bin")
    done.upload(b"0123456789", fragment_size=4)  # 3 fragments
    assert done.close().status_int == 200
    cancelled = BitsClient(app, path="/cancelled.bin")
    cancelled.create()
    assert cancelled.fragment(b"abc", 2, 9).status_int == 416
    assert cancelled.cancel().status_int == 200
    assert done.fragment(b"x", 0, 1, session_id="{00000000-0000-0000-0000-000000000000}").status_int

    samples = _metrics(app)
    assert samples["bits_sessions_total{event=created}"] == 2
    assert samples["bits_sessions_total{event=closed}"] == 1
    assert samples["bits_sessions_total{event=cancelled}"] == 1
    assert samples["bits_fragment_body_bytes_total{}"] == 10
    assert samples["bits_range_mismatches_total{}"] == 1
    assert [k for k in samples if k.startswith("bits_errors_total")] == [
        "bits_errors_total{code=0x8020001F}"  # the unknown session; the 416 counts apart
    ]
    assert samples["bits_packets_total{packet=Fragment,status=200}"] == 3
    assert samples["bits_fragment_seconds_count{}"] == 5
    assert samples["bits_fragment_seconds_bucket{le=+Inf}"] == 5


def test_metrics_show_the_free_disk_and_its_floor(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = BITSMiddleware(
        fallback_app,
        upload_dir,
        metrics=PrometheusMetrics(),
        metrics_path="/-/metrics",
        min_free_disk=5_000_000,
    )
    samples = _metrics(app)
    free = shutil.disk_usage(upload_dir).free
    assert abs(samples["bits_disk_free_bytes{directory=/}"] - free) < 64 * 1024 * 1024
    assert samples["bits_disk_floor_bytes{directory=/}"] == 5_000_000
    # in multiprocess mode too, where the counters come from every worker's files
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(upload_dir.parent / "prometheus"))
    (upload_dir.parent / "prometheus").mkdir()
    assert _metrics(app)["bits_disk_floor_bytes{directory=/}"] == 5_000_000
    without = BITSMiddleware(
        fallback_app, upload_dir, metrics=PrometheusMetrics(), metrics_path="/-/metrics"
    )
    assert not [key for key in _metrics(without) if key.startswith("bits_disk_floor")]


def test_the_metrics_path_is_the_operators_and_other_paths_pass_through(upload_dir: Path) -> None:
    app = BITSMiddleware(
        fallback_app, upload_dir, metrics=PrometheusMetrics(), metrics_path="/ops/metrics"
    )
    test = webtest.TestApp(app)
    assert test.get("/metrics").text.startswith("app GET /metrics")  # the wrapped app's
    assert "bits_packets_total" in test.get("/ops/metrics").text
    with pytest.raises(ValueError, match="metrics_path"):
        BITSMiddleware(fallback_app, upload_dir, metrics_path="/metrics")
