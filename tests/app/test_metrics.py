"""The metrics endpoint binds loopback by default, survives a taken port, and reads its figures
from the supervisor's events (the full daemon is scraped in test_systemd.py)."""

from __future__ import annotations

import logging
import socket
import urllib.request

from app.metrics import MetricsExporter
from app.retention import RetentionStats
from pipeline.config import MetricsConfig


class _Retention:
    stats = RetentionStats(incidents_deleted=7, snapshots_deleted=14, bytes_freed=1400)


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_loopback_by_default_and_fed_by_stage_events() -> None:
    assert MetricsConfig().host == "127.0.0.1"
    exporter = MetricsExporter(MetricsConfig(port=0), _Retention())
    exporter.start()
    try:
        assert exporter.server.server_address[0] == "127.0.0.1"
        latency = {"bounds_s": [0.01, 0.1], "counts": [3, 5], "count": 6, "sum_s": 0.4}
        copies = {"sites": {"resize": 10, "tensor": 12}, "per_frame": 2.2, "avoidable_per_frame": 0.0}
        exporter.on_event("inference", "heartbeat", {"malformed": 2, "refused": 9, "latency": latency, "batches": 6, "frames": 10,
                                                     "batch_wait": latency, "frame_copies": copies, "car_inferences": 4,
                                                     "damage_inferences": 3})
        exporter.on_event("incidents", "heartbeat", {"snapshot_errors": 1, "errors": 0, "frames": {"cam": 10}})
        text = _get(exporter.port)
    finally:
        exporter.on_stop(None)
    assert 'scratchwatch_peers_refused_total{stage="inference"} 9.0' in text
    assert 'scratchwatch_messages_malformed_total{stage="inference"} 2.0' in text
    assert 'scratchwatch_inference_batch_seconds_bucket{le="0.1"} 5.0' in text
    assert 'scratchwatch_inference_batch_seconds_bucket{le="+Inf"} 6.0' in text
    assert 'scratchwatch_inference_batch_wait_seconds_bucket{le="0.1"} 5.0' in text
    assert 'scratchwatch_inference_frame_copies_total{site="tensor"} 12.0' in text
    assert 'scratchwatch_inference_frame_copies_total{site="resize"} 10.0' in text
    assert "scratchwatch_inference_batches_total 6.0" in text and "scratchwatch_inference_frames_total 10.0" in text
    assert "scratchwatch_inference_car_inferences_total 4.0" in text  # 6 of 10 frames were still: no car-stage pass
    assert "scratchwatch_inference_damage_inferences_total 3.0" in text
    assert "scratchwatch_incidents_snapshot_errors_total 1.0" in text
    assert "scratchwatch_retention_incidents_deleted_total 7.0" in text
    assert 'scratchwatch_stage_last_heartbeat_timestamp_seconds{stage="inference"}' in text


def test_a_taken_port_costs_the_metrics_not_the_daemon(caplog) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        exporter = MetricsExporter(MetricsConfig(port=taken.getsockname()[1]))
        with caplog.at_level(logging.ERROR):
            exporter.start()
    assert exporter.port is None and "not started" in caplog.text
