"""The daemon's Prometheus endpoint, served by the supervisor process.

Nothing is counted twice: at scrape time a collector reads what the supervisor already knows
(capture threads' counters, the incidents stage's per-camera counts, the last event of each stage
and the counters stages send with their heartbeats, retention's totals). The stages need no
HTTP server and no shared memory; a scrape can never slow the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from pipeline.config import MetricsConfig
from pipeline.runner import Observer

log = logging.getLogger(__name__)
LIVE_STATES = ("connected", "reading")


class MetricsExporter(Observer):
    """An observer of the supervisor that is also a Prometheus collector."""

    def __init__(self, config: MetricsConfig, retention: Any = None) -> None:
        self.config = config
        self.retention = retention
        """The RetentionJob, whose ``stats`` hold the deletion totals (None when retention is off)."""
        self.supervisor: Any = None
        self.last_event: dict[str, float] = {}
        self.stage_counters: dict[str, dict[str, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.server: Any = None

    def start(self) -> None:
        """Serve from now on (model loading included); a port in use costs the metrics, not the daemon."""
        try:
            self.server, _thread = start_http_server(self.config.port, addr=self.config.host, registry=self.registry)
        except OSError as exc:
            log.error("metrics endpoint %s:%d not started: %s", self.config.host, self.config.port, exc)
            return
        log.info("metrics on http://%s:%d/metrics", self.config.host, self.server.server_port)

    @property
    def port(self) -> int | None:
        return self.server.server_port if self.server else None

    def on_ready(self, supervisor: Any) -> None:
        self.supervisor = supervisor

    def on_event(self, stage: str, event: str, data: dict[str, Any]) -> None:
        self.last_event[stage] = time.time()
        if event in ("heartbeat", "done"):
            self.stage_counters[stage] = data

    def on_stop(self, supervisor: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def collect(self) -> Iterator[Metric]:
        yield from self._cameras()
        yield from self._stages()
        yield from self._inference()
        yield from self._retention()

    def _cameras(self) -> Iterator[Metric]:
        families = {
            "in": CounterMetricFamily("scratchwatch_frames_captured", "Frames read from the camera for analysis", labels=["camera"]),
            "dropped": CounterMetricFamily("scratchwatch_frames_dropped", "Live frames dropped because inference was busy", labels=["camera"]),
            "analysed": CounterMetricFamily("scratchwatch_frames_analysed", "Frames that went through the detector", labels=["camera"]),
            "undelivered": CounterMetricFamily("scratchwatch_detections_dropped", "Live frames analysed whose detections the "
                                               "incidents stage did not take within transport.live_send_timeout_s", labels=["camera"]),
            "reconnects": CounterMetricFamily("scratchwatch_camera_reconnects", "Times a live stream was lost", labels=["camera"]),
            "incidents": CounterMetricFamily("scratchwatch_incidents_opened", "Incidents opened", labels=["camera"]),
            "up": GaugeMetricFamily("scratchwatch_camera_up", "1 while the camera delivers frames", labels=["camera"]),
            "last": GaugeMetricFamily("scratchwatch_camera_last_frame_timestamp_seconds", "UTC time of the last frame", labels=["camera"]),
        }
        undelivered = self.stage_counters.get("inference", {}).get("undelivered", {})
        families["closed"] = CounterMetricFamily("scratchwatch_incidents_closed", "Incidents closed", labels=["camera"])
        counted: set[str] = set()
        for thread in self.supervisor.captures if self.supervisor else []:
            camera, stats = [thread.spec.camera], thread.stats
            families["undelivered"].add_metric(camera, undelivered.get(thread.spec.camera, 0) if isinstance(undelivered, dict) else 0)
            result = self.supervisor.results.get(thread.spec.camera)
            families["in"].add_metric(camera, stats.sent + stats.dropped)
            families["dropped"].add_metric(camera, stats.dropped)
            families["reconnects"].add_metric(camera, stats.reconnects)
            families["up"].add_metric(camera, 1.0 if stats.state in LIVE_STATES and not stats.finished else 0.0)
            if stats.last_frame_ns:
                families["last"].add_metric(camera, stats.last_frame_ns / 1e9)
            if result is not None:
                counted.add(thread.spec.camera)
                families["analysed"].add_metric(camera, result.frames)
                families["incidents"].add_metric(camera, result.incidents)
        incidents = self.stage_counters.get("incidents", {})
        for key, family in (("frames", "analysed"), ("incidents", "incidents")):  # an incidents stage on its own
            for camera, count in _per_camera(incidents.get(key)).items():
                if camera not in counted:
                    families[family].add_metric([camera], count)
        for camera, count in _per_camera(incidents.get("closed")).items():
            families["closed"].add_metric([camera], count)
        yield from families.values()
        yield GaugeMetricFamily("scratchwatch_frames_in_flight", "Frames sent by capture, not yet analysed nor dropped by inference: "
                                "what is queued between the stages", value=self._in_flight())

    def _in_flight(self) -> int:
        """Summed over cameras: inference drops stale live frames without saying whose."""
        if self.supervisor is None:
            return 0
        sent = sum(thread.stats.sent for thread in self.supervisor.captures)
        analysed = sum(result.frames for result in self.supervisor.results.values())
        inference = self.stage_counters.get("inference", {})
        dropped = inference.get("dropped_live", 0)
        undelivered = inference.get("undelivered", {})
        dropped = (dropped if isinstance(dropped, int) else 0) + (sum(undelivered.values()) if isinstance(undelivered, dict) else 0)
        return max(0, sent - analysed - dropped)

    def _stages(self) -> Iterator[Metric]:
        last = GaugeMetricFamily("scratchwatch_stage_last_heartbeat_timestamp_seconds", "Time of the stage's last event", labels=["stage"])
        malformed = CounterMetricFamily("scratchwatch_messages_malformed", "Malformed messages skipped", labels=["stage"])
        refused = CounterMetricFamily("scratchwatch_peers_refused", "CurveZMQ handshakes refused", labels=["stage"])
        restarts = CounterMetricFamily("scratchwatch_stage_restarts", "Times the supervisor restarted the stage after it died, "
                                       "failed or stalled", labels=["stage"])
        for stage, count in sorted(getattr(self.supervisor, "restarts", {}).items()):
            restarts.add_metric([stage], count)
        for stage, at in sorted(self.last_event.items()):
            last.add_metric([stage], at)
        for stage, data in sorted(self.stage_counters.items()):
            if isinstance(data.get("malformed"), int):
                malformed.add_metric([stage], data["malformed"])
            if isinstance(data.get("refused"), int):
                refused.add_metric([stage], data["refused"])
        yield from (last, malformed, refused, restarts)

    def _inference(self) -> Iterator[Metric]:
        data = self.stage_counters.get("inference", {})
        yield from _histogram("scratchwatch_inference_batch_seconds", "Detector time per batch", data.get("latency"))
        yield from _histogram("scratchwatch_inference_car_stage_seconds", "Car-stage time per batch (every frame of it)",
                              data.get("car_latency"))
        yield from _histogram("scratchwatch_inference_damage_stage_seconds", "Damage-model time per batch (every car crop "
                              "or whole frame of it)", data.get("damage_latency"))
        yield from _histogram("scratchwatch_inference_batch_wait_seconds", "Time a batch's oldest frame waited for the batch to fill",
                              data.get("batch_wait"))
        copies = data.get("frame_copies")
        if isinstance(copies, dict):
            family = CounterMetricFamily("scratchwatch_inference_frame_copies", "Writes of frame pixels into another buffer "
                                         "by site (resize, tensor, jpeg_decode: needed; others: avoidable)", labels=["site"])
            for site, count in copies.get("sites", {}).items():
                family.add_metric([site], count)
            yield family
        for key, help_text in (("frames", "Frames run through the detector (frames / batches: the mean batch size)"),
                               ("batches", "Detector batches run"), ("errors", "Frames the detector failed on"),
                               ("car_inferences", "Frames the car stage ran on (the others were still and reused their camera's cars)"),
                               ("damage_inferences", "Damage-model inputs run (car crops or whole frames)")):
            if isinstance(data.get(key), int):
                yield CounterMetricFamily(f"scratchwatch_inference_{key}", help_text, value=data[key])
        incidents = self.stage_counters.get("incidents", {})
        for key, help_text in (("snapshot_errors", "Snapshots that could not be written"), ("errors", "Messages the incidents stage skipped"),
                               ("snapshots_dropped", "Queued incidents' snapshots deleted to keep the spool within database.spool_max_mb"),
                               ("snapshots_refused", "Snapshots not written: free disk below database.spool_reserve_mb"),
                               ("snapshots_skipped", "Snapshots not written: the spool file alone past database.spool_max_mb"),
                               ("late", "Detections tracked out of order after their gap was given up on (separate stages)"),
                               ("reorder_skipped", "Frames of a file never received by incidents (separate stages)"),
                               ("link_stops", "STOPs on the detections link ignored (separate stages)")):
            if isinstance(incidents.get(key), int):
                yield CounterMetricFamily(f"scratchwatch_incidents_{key}", help_text, value=incidents[key])
        yield from _histogram("scratchwatch_db_write_seconds", "Time of each committed incident write", incidents.get("db_write_latency"))
        for key, name, help_text in (("spooled", "spool_records", "Incident records in the spool, not yet committed"),
                                     ("spool_bytes", "spool_bytes", "Size of the spool files"),
                                     ("spool_oldest_age_s", "spool_oldest_age_seconds", "How long the oldest spooled record has waited")):
            if isinstance(incidents.get(key), (int, float)):
                yield GaugeMetricFamily(f"scratchwatch_{name}", help_text, value=incidents[key])

    def _retention(self) -> Iterator[Metric]:
        if self.retention is None:
            return
        stats = self.retention.stats
        yield CounterMetricFamily("scratchwatch_retention_incidents_deleted", "Incidents deleted by retention", value=stats.incidents_deleted)
        yield CounterMetricFamily("scratchwatch_retention_snapshots_deleted", "Snapshot files deleted by retention", value=stats.snapshots_deleted)
        yield CounterMetricFamily("scratchwatch_retention_orphans_deleted", "Snapshot files no incident referenced, deleted",
                                  value=stats.orphans_deleted)
        yield CounterMetricFamily("scratchwatch_retention_freed_bytes", "Bytes of snapshots deleted by retention", value=stats.bytes_freed)
        yield GaugeMetricFamily("scratchwatch_retention_max_lock_seconds", "Longest write transaction of retention", value=stats.max_lock_ms / 1000)


def _histogram(name: str, help_text: str, snapshot: Any) -> Iterator[Metric]:
    """A stage's ``Histogram.snapshot()`` as a Prometheus histogram (nothing when the stage has none)."""
    if not isinstance(snapshot, dict):
        return
    histogram = HistogramMetricFamily(name, help_text)
    buckets = [(str(b), float(c)) for b, c in zip(snapshot["bounds_s"], snapshot["counts"])]
    histogram.add_metric([], [*buckets, ("+Inf", float(snapshot["count"]))], sum_value=snapshot["sum_s"])
    yield histogram


def _per_camera(counts: Any) -> dict[str, int]:
    return {str(k): v for k, v in counts.items() if isinstance(v, int)} if isinstance(counts, dict) else {}
