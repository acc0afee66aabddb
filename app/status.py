"""``scratchwatch status``: the running daemon's health, read from its own metrics endpoint.

The endpoint already holds every figure (per-camera frames, reconnects, last frame, heartbeats),
so status is a client of it rather than a second channel into the daemon.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import MetricsConfig

CAMERA_COLUMNS = {
    "scratchwatch_camera_up": "up",
    "scratchwatch_camera_last_frame_timestamp_seconds": "last_frame",
    "scratchwatch_frames_captured_total": "captured",
    "scratchwatch_frames_analysed_total": "analysed",
    "scratchwatch_frames_dropped_total": "dropped",
    "scratchwatch_detections_dropped_total": "undelivered",
    "scratchwatch_camera_reconnects_total": "reconnects",
    "scratchwatch_incidents_opened_total": "incidents",
}


class DaemonUnreachableError(RuntimeError):
    """No daemon answered on the metrics endpoint; the message says where it looked."""


def read_status(config: MetricsConfig, timeout_s: float = 5.0) -> dict[str, Any]:
    """``{"cameras": {id: {...}}, "stages": {name: last_heartbeat}}`` from the live endpoint."""
    url = f"http://{config.host}:{config.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise DaemonUnreachableError(f"no daemon answering on {url} ({exc}): is `scratchwatch run` running with metrics enabled?") from None
    cameras: dict[str, dict[str, float]] = defaultdict(dict)
    stages: dict[str, float] = {}
    restarts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in CAMERA_COLUMNS:
                cameras[sample.labels["camera"]][CAMERA_COLUMNS[sample.name]] = sample.value
            elif sample.name == "scratchwatch_stage_last_heartbeat_timestamp_seconds":
                stages[sample.labels["stage"]] = sample.value
            elif sample.name == "scratchwatch_stage_restarts_total":
                restarts[sample.labels["stage"]] = sample.value
    return {"cameras": dict(cameras), "stages": stages, "restarts": restarts}


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    counts = ("captured", "analysed", "dropped", "undelivered", "reconnects", "incidents")
    rows = [("camera", "state", "last frame", *counts)]
    for camera, values in sorted(status["cameras"].items()):
        rows.append((camera, "up" if values.get("up") else "DOWN", _age(values.get("last_frame"), now),
                     *(str(int(values.get(key, 0))) for key in counts)))
    blank = ("",) * (len(counts) - 1)
    rows.append(("", "", "", "", *blank))
    rows.append(("stage", "last heartbeat", "restarts", "", *blank))
    restarts = status.get("restarts", {})
    rows += [(stage, _age(at, now), str(int(restarts.get(stage, 0))), "", *blank) for stage, at in sorted(status["stages"].items())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _age(timestamp: float | None, now: float) -> str:
    return "never" if not timestamp else f"{max(0.0, now - timestamp):.1f} s ago"
