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


def test_past_the_spool_limit_the_oldest_queued_snapshots_are_deleted_and_the_newest_kept(make_settings, caplog) -> None:
    """The database is locked (a real SQLite lock), so every record waits in the real spool with its
    snapshots. Three incidents' JPEGs do not fit the limit beside the spool: the oldest incident's are
    deleted and counted, its record stays (without paths), the two newest keep theirs."""
    import logging
    import sqlite3

    import cv2

    from pipeline.incidents import open_spool
    from storage.db import connect
    from storage.repository import IncidentRepository
    from storage.writer import IncidentWriter, LazyRepository

    settings = make_settings(tracker={"min_hits": 1, "max_missed": 50}, snapshots={"margin": 0})
    connect(settings.database_url).dispose()
    holder = sqlite3.connect(settings.data_dir / "scratchwatch.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)  # JPEG barely compresses it
    frame_bytes = len(cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
    database = LazyRepository(settings.database_url)
    writer = IncidentWriter(database, open_spool(settings))
    writer.spool.max_bytes = int(writer.spool.size_bytes() + 2.5 * frame_bytes + 200_000)  # room for two incidents' JPEGs
    stage = IncidentsStage(settings, writer)
    boxes = np.array([[100, 100, 120, 110, 0.9, 0]], dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="pipeline.incidents"):
        for camera in ("a", "b", "c"):
            stage.handle(decode(over_zmq(encode_detections(header(noise.shape, camera=camera, seq=0), boxes, noise))))
    jpegs = {path.name.split("_")[0]: path for path in (settings.data_dir / "snapshots").rglob("*_frame.jpg")}
    queued = {uid: paths for _seq, uid, paths in writer.spool.queued_snapshots()}
    holder.rollback()
    holder.close()
    stage.handle(StopHeader())
    assert writer.close(timeout=30)
    database.dispose()

    assert stage.snapshots_dropped == 1
    assert [r.getMessage() for r in caplog.records if "spool_max_mb" in r.getMessage()] == [
        "spool and the snapshots of its queued records are over database.spool_max_mb "
        f"({writer.spool.max_bytes / 1e6:g} MB): deleted the snapshots of the 1 oldest queued incident(s), 1 so far; records are kept"]
    engine = connect(settings.database_url)
    rows = {r.camera_id: r for r in IncidentRepository(engine).list()}
    engine.dispose()
    assert sorted(rows) == ["a", "b", "c"], "every record is kept"
    assert rows["a"].snapshot_path is None and rows["a"].crop_path is None
    assert rows["b"].snapshot_path and rows["c"].snapshot_path
    assert set(jpegs) == {rows["b"].uid, rows["c"].uid} == set(queued), "the oldest incident's JPEGs are gone from disk"
    assert not list((settings.data_dir / "snapshots").rglob(f"{rows['a'].uid}_*"))
