"""Small builders shared by the storage tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from storage.repository import IncidentRecord

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def make_record(n: int = 0, **overrides: Any) -> IncidentRecord:
    """A valid live incident; `n` makes uid and times distinct (opened n minutes after T0)."""
    opened = T0 + timedelta(minutes=n)
    fields: dict[str, Any] = dict(
        uid=f"00000000-0000-4000-8000-{n:012d}",
        camera_id="lot-east",
        kind="live",
        source="rtsp://cam/east",
        opened_at=opened,
        captured_at=opened,
        best_score=0.5,
        x1=10,
        y1=20,
        x2=110,
        y2=220,
        frame_width=1920,
        frame_height=1080,
        model_name="scratch-yolov5n",
        model_sha256="ab" * 32,
        detection_count=3,
    )
    fields.update(overrides)
    return IncidentRecord(**fields)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll a condition the code under test will make true; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
