"""Capture -> incidents latency per camera, over a bounded window of recent frames.

The incidents stage records, for every frame it has decided on (tracker updated, any opened
incident handed to the writer), how long ago the frame was captured; ``scratchwatch bench``
reads the percentiles from the stage's counters to say how many cameras a host holds.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

WINDOW = 2000
"""Recent frames kept per camera: enough for a p95, bounded for a daemon that runs for months."""


class LatencyLog:
    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._ms: dict[str, deque[float]] = {}
        self._span: dict[str, list[int]] = {}  # camera -> [frames, first ns, last ns]

    def add(self, camera: str, captured_ns: int) -> None:
        now = time.time_ns()
        samples = self._ms.get(camera)
        if samples is None:
            samples = self._ms[camera] = deque(maxlen=self.window)
            self._span[camera] = [0, now, now]
        samples.append((now - captured_ns) / 1e6)
        span = self._span[camera]
        span[0] += 1
        span[2] = now

    def summary(self) -> dict[str, dict[str, float]]:
        """Per camera: p50, p95 and max in ms over the window, and the analysed fps since its first frame."""
        out = {}
        for camera, samples in self._ms.items():
            values = np.fromiter(samples, dtype=np.float64, count=len(samples))
            p50, p95 = np.percentile(values, [50, 95])
            frames, first, last = self._span[camera]
            fps = (frames - 1) / ((last - first) / 1e9) if last > first else 0.0
            out[camera] = {"frames": frames, "fps": round(fps, 2), "p50": round(float(p50), 2),
                           "p95": round(float(p95), 2), "max": round(float(values.max()), 2)}
        return out
