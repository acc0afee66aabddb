"""The incidents stage survives a message it cannot handle, and keeps what the database refused."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline.incidents import IncidentsStage, dump_unsaved, handle_safely
from pipeline.logs import RateLimitedLog
from pipeline.messages import decode, encode_detections
from storage.format import record_to_dict
from storage.repository import IncidentRecord
from tests.pipeline.test_messages import header, image, over_zmq


class ListWriter:
    """Collects submitted records (the stage's only dependency on storage)."""

    def __init__(self) -> None:
        self.records: list[IncidentRecord] = []

    def submit(self, record: IncidentRecord) -> None:
        self.records.append(record)


def detections(seq: int, box: list[float]):
    boxes = np.array([box + [0.9, 0]], dtype=np.float32)
    return decode(over_zmq(encode_detections(header(seq=seq), boxes, image(), model_name="m.onnx", model_sha256="ab" * 32)))


def test_a_message_that_raises_is_skipped_and_the_stage_goes_on(make_settings) -> None:
    import logging

    settings = make_settings(tracker={"min_hits": 1, "max_missed": 5}, snapshots={"enabled": False})
    writer = ListWriter()
    stage = IncidentsStage(settings, writer)
    bad = RateLimitedLog(logging.getLogger("test"), 0)
    nan = detections(0, [float("nan"), 0, 2, 2])  # a model gone wrong: NaN coordinates
    assert handle_safely(stage, nan, bad) is False
    assert stage.errors == 1
    assert handle_safely(stage, detections(1, [1, 1, 3, 3]), bad) is False
    assert [r.camera_id for r in writer.records] == ["cam"], "the next good message still opens an incident"


def test_unsaved_records_are_kept_as_json_lines(tmp_path: Path) -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    record = IncidentRecord(
        uid="u-1", camera_id="cam", kind="replay", source="/v.mp4", opened_at=now, captured_at=now,
        best_score=0.9, x1=1, y1=2, x2=3, y2=4, frame_width=6, frame_height=4, model_name="m.onnx",
        model_sha256="ab" * 32, detection_count=3,
    )
    path = dump_unsaved([record], tmp_path)
    assert path.parent == tmp_path / "unsaved"
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record_to_dict(record)]
