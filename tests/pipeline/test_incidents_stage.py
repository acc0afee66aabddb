"""The incidents stage survives a message it cannot handle."""

from __future__ import annotations


import numpy as np

from pipeline.incidents import IncidentsStage, handle_safely
from storage.repository import IncidentRecord
from pipeline.logs import RateLimitedLog
from pipeline.messages import StopHeader, decode, encode_detections
from tests.pipeline.test_messages import header, image, over_zmq


class ListWriter:
    """Collects submitted records (the stage's only dependency on storage)."""

    def __init__(self) -> None:
        self.records: list[IncidentRecord] = []

    def submit(self, record: IncidentRecord) -> None:
        self.records.append(record)

    def stats(self) -> dict[str, object]:
        return {}


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


def test_a_full_disk_costs_snapshots_never_incident_rows(make_settings, monkeypatch) -> None:
    """ENOSPC injected where the JPEG is written (a full disk cannot be made here); the real
    writer, spool and SQLite still commit every incident, and the snapshot errors are counted."""
    import errno

    from pipeline.incidents import open_spool
    from storage.db import connect
    from storage.repository import IncidentRepository
    from storage.writer import IncidentWriter, LazyRepository

    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pipeline.snapshots.os.replace", disk_full)
    settings = make_settings(tracker={"min_hits": 2, "max_missed": 2})
    database = LazyRepository(settings.database_url)
    writer = IncidentWriter(database, open_spool(settings))
    stage = IncidentsStage(settings, writer)
    for seq in range(4):
        stage.handle(detections(seq, [1, 1, 3, 3]))
    stage.handle(StopHeader())
    assert writer.close(timeout=30)
    database.dispose()
    engine = connect(settings.database_url)
    [row] = IncidentRepository(engine).list()
    engine.dispose()
    assert row.closed_at is not None and row.snapshot_path is None
    assert stage.snapshot_errors >= 2  # at open and at close
    assert not list((settings.data_dir / "snapshots").rglob("*.jpg"))
