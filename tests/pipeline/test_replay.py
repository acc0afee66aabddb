"""End to end: generated clips through the real stages (spawned processes, ZeroMQ, ONNX Runtime,
SQL) into incident rows and snapshots."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from sqlalchemy import create_engine, text

from pipeline.runner import Supervisor, replay_files, replay_specs
from storage.db import connect
from storage.repository import IncidentRecord, IncidentRepository
from tests.pipeline.conftest import CLIP_FRAMES, CLIP_MARKS
from tests.pipeline.synthetic import RED_BGR, scene, write_clip

BOX_TOLERANCE_PX = 6


def stored(url: str) -> list[IncidentRecord]:
    engine = connect(url)
    try:
        return IncidentRepository(engine).list(newest_first=False)
    finally:
        engine.dispose()


def assert_box_on_mark(record: IncidentRecord, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    expected = (x, y, x + w, y + h)
    assert all(abs(a - b) <= BOX_TOLERANCE_PX for a, b in zip(record.box, expected)), (record.box, expected)


def test_replay_writes_incidents_with_media_time_box_and_snapshots(make_settings, two_mark_clip: Path, database_url: str) -> None:
    settings = make_settings(database={"url": database_url})
    report = replay_files(settings, [two_mark_clip], progress=False)

    assert report.ok, report
    [result] = report.files
    assert (result.camera, result.frames, result.incidents) == ("replay:lot", CLIP_FRAMES, 2)
    inference = report.stages["inference"]
    assert inference["detections_sent"] == inference["detections_acknowledged"] == CLIP_FRAMES, "the end was acknowledged"
    rows = stored(database_url)
    assert len(rows) == 2
    for row, mark in zip(rows, CLIP_MARKS):
        assert (row.camera_id, row.kind, row.source) == ("replay:lot", "replay", str(two_mark_clip))
        assert row.first_media_time_s == pytest.approx(mark.start / 10)
        assert mark.start / 10 <= row.media_time_s < mark.end / 10
        assert row.detection_count == mark.end - mark.start
        assert row.closed_at is not None and row.closed_at >= row.opened_at
        assert row.captured_at >= row.opened_at and row.recorded_at >= row.captured_at
        assert (row.frame_width, row.frame_height) == (320, 240)
        assert row.model_name == "red-ultralytics.onnx" and len(row.model_sha256) == 64
        assert_box_on_mark(row, mark.box)
        snapshots = settings.data_dir / "snapshots"
        frame, crop = cv2.imread(str(snapshots / row.snapshot_path)), cv2.imread(str(snapshots / row.crop_path))
        assert frame.shape == (240, 320, 3)
        w, h = mark.box[2:]
        assert w <= crop.shape[1] <= 2 * w + 2 * BOX_TOLERANCE_PX and h <= crop.shape[0] <= 2 * h + 2 * BOX_TOLERANCE_PX
        assert Path(row.snapshot_path).parent.parent == Path("replay_lot"), "relative to the snapshot root"
        car_box = (row.car_x1, row.car_y1, row.car_x2, row.car_y2)  # the scene's blue car (x 40-288, y 45-170)
        cx, cy = (row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2
        assert car_box[0] < 45 and car_box[2] > 280 and car_box[0] < cx < car_box[2] and car_box[1] < cy < car_box[3], car_box
        assert row.car_score > 0.5 and row.car_track_id is None  # inspect_every_s 0: no car tracking
        car = cv2.imread(str(snapshots / row.car_path))
        assert abs(car.shape[1] - (car_box[2] - car_box[0])) < 0.2 * car.shape[1]  # the whole car, damage drawn on it
    assert not list((settings.data_dir / "snapshots").rglob("*.tmp"))
    assert not list((settings.data_dir / "run").glob("*.sock"))


def test_classic_fixed_batch_model_gives_the_same_incidents(make_settings, red_model_classic: Path, two_mark_clip: Path) -> None:
    settings = make_settings(detector={"model": str(red_model_classic)}, replay={"fps": 5})
    report = replay_files(settings, [two_mark_clip], progress=False)
    assert report.ok and report.files[0].frames == CLIP_FRAMES // 2
    rows = stored(settings.database_url)
    assert [r.first_media_time_s for r in rows] == [1.0, 4.0]


def run_cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_missing_and_corrupt_files_fail_by_name_while_the_good_one_completes(make_settings, two_mark_clip: Path, tmp_path: Path) -> None:
    make_settings()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    missing = tmp_path / "missing.mp4"
    proc = run_cli("--config", "config.yaml", "replay", "--no-progress", str(two_mark_clip), str(missing), str(corrupt), cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert f"{two_mark_clip}: {CLIP_FRAMES} frames, 2 incidents, ok" in out
    assert f"video file {missing}: not found" in out and f"video file {missing}: not found" in err
    assert f"video file {corrupt}:" in out


def test_sigterm_during_replay_exits_0_and_closes_every_incident(make_settings, two_mark_clip: Path, tmp_path: Path) -> None:
    full = replay_files(make_settings(data_dir=str(tmp_path / "full")), [two_mark_clip], progress=False)
    full_rows = stored(f"sqlite:///{tmp_path / 'full' / 'scratchwatch.db'}")
    assert full.ok and len(full_rows) == 2

    settings = make_settings()
    proc = run_cli("--config", "config.yaml", "replay", "--realtime", "--no-progress", str(two_mark_clip), cwd=tmp_path)
    db = settings.data_dir / "scratchwatch.db"
    deadline = time.monotonic() + 60
    while not (db.exists() and _count_rows(db)):  # the first incident has opened
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rows = stored(settings.database_url)
    assert len(rows) == 1, "SIGTERM came between the first and the second mark"
    assert all(r.closed_at is not None for r in rows)
    assert [r.first_media_time_s for r in rows] == [r.first_media_time_s for r in full_rows[: len(rows)]]
    assert 0 < rows[0].detection_count <= full_rows[0].detection_count
    assert (settings.data_dir / "snapshots" / rows[0].snapshot_path).is_file()
    assert "SIGTERM: stopping capture" in err


def _count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=0.1) as conn:
            return conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
    except sqlite3.Error:
        return 0


class SqliteLock:
    """Another writer holding SQLite's write lock (BEGIN IMMEDIATE) for ``hold_s`` seconds."""

    def __init__(self, url: str, hold_s: float) -> None:
        self.engine = create_engine(url)
        self.conn = self.engine.connect()
        self.hold_s = hold_s
        self.timer: threading.Timer | None = None

    def take(self) -> None:
        if self.timer is None:
            self.conn.exec_driver_sql("BEGIN IMMEDIATE")
            self.conn.execute(text("INSERT INTO cameras VALUES ('lock', 'x', 'live', '2025-01-01', '2025-01-01')"))
            self.timer = threading.Timer(self.hold_s, self.conn.rollback)
            self.timer.start()

    def close(self) -> None:
        if self.timer:
            self.timer.join()
        self.conn.close()
        self.engine.dispose()


@pytest.mark.parametrize("when", ["at_start", "mid_replay"])
def test_incidents_land_although_the_database_is_locked_for_a_while(make_settings, two_mark_clip: Path, when: str) -> None:
    """Locked longer than SQLite's 5 s busy timeout: at start (connect retries) or while
    incidents open (IncidentWriter retries)."""
    settings = make_settings()
    connect(settings.database_url).dispose()
    lock = SqliteLock(settings.database_url, hold_s=7.0)
    supervisor = Supervisor(settings, replay_specs(settings, [two_mark_clip], realtime=when == "mid_replay"))
    try:
        if when == "at_start":
            lock.take()
            report = supervisor.run()
        else:
            report = supervisor.run(on_progress=lambda _: lock.take())  # once the stages are up
    finally:
        lock.close()
    assert report.ok, report
    if when == "mid_replay":
        assert report.stages["incidents"]["db_retries"] >= 1
    rows = stored(settings.database_url)
    assert [r.first_media_time_s for r in rows] == [1.0, 4.0]
    assert all(r.closed_at is not None for r in rows)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_two_files_replay_side_by_side_with_their_own_cameras(make_settings, two_mark_clip: Path, tmp_path: Path, transport: str) -> None:
    other = write_clip(tmp_path / "other.avi", 30, CLIP_MARKS[:1])
    report = replay_files(make_settings(transport={"kind": transport}), [two_mark_clip, other], progress=False)
    assert report.ok
    assert {(f.camera, f.frames, f.incidents) for f in report.files} == {("replay:lot", 60, 2), ("replay:other", 30, 1)}


def test_inference_dying_mid_run_still_closes_and_saves_open_incidents(make_settings, two_mark_clip: Path) -> None:
    """A crashed stage ends the run with its reason, but the incidents stage is stopped in-band
    (not killed), so the incident already open is closed and saved."""
    from pipeline.runner import PipelineError

    settings = make_settings()
    supervisor = Supervisor(settings, replay_specs(settings, [two_mark_clip], realtime=True))

    def kill_inference_after_first_incident(sup: Supervisor) -> None:
        if sup.results["replay:lot"].incidents >= 1 and sup._processes["inference"].is_alive():
            sup._processes["inference"].kill()

    with pytest.raises(PipelineError, match="inference stage"):
        supervisor.run(on_progress=kill_inference_after_first_incident)
    rows = stored(settings.database_url)
    assert len(rows) == 1 and rows[0].first_media_time_s == 1.0
    assert rows[0].closed_at is not None, "the open incident was closed by the in-band STOP"
    assert rows[0].snapshot_path and (settings.data_dir / "snapshots" / rows[0].snapshot_path).is_file()


def test_a_parked_cars_damage_gives_the_same_incidents_when_still_frames_skip_the_car_stage(make_settings, tmp_path: Path) -> None:
    """A car that never moves, damage marks appearing on it: skipping still frames saves car-stage
    runs and inspections and finds the same incidents as running everything on every frame."""
    clip = tmp_path / "parked.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    for index in range(CLIP_FRAMES):
        frame = scene(0, [])  # no drift: the car is parked
        for mark in CLIP_MARKS:
            if mark.visible(index):
                x, y, w, h = mark.box
                cv2.rectangle(frame, (x, y), (x + w - 1, y + h - 1), RED_BGR, -1)
        writer.write(frame)
    writer.release()
    found = {}
    for still in (False, True):
        cars = {"model": str(make_settings().detector.cars.model), "inspect_every_s": 1.0, "motion": {"enabled": still}}
        settings = make_settings(detector={"cars": cars}, data_dir=str(tmp_path / f"data-{still}"))
        report = replay_files(settings, [clip], progress=False)
        assert report.ok, report
        rows = stored(settings.database_url)
        found[still] = ([(r.first_media_time_s, r.detection_count) for r in rows], report.stages["inference"])
    assert [t for t, _ in found[True][0]] == [t for t, _ in found[False][0]] == [m.start / 10 for m in CLIP_MARKS]
    # skipping re-inspects the car when its pixels change, so it also sees each mark go at once;
    # the full run holds the last boxes until the next 1 s inspection
    assert [n for _, n in found[True][0]] == [m.end - m.start for m in CLIP_MARKS], found
    assert all(n_full >= n for (_, n), (_, n_full) in zip(found[True][0], found[False][0]))
    skipping, full = found[True][1], found[False][1]
    assert full["car_inferences"] == full["frames"] == CLIP_FRAMES
    assert skipping["car_inferences"] < CLIP_FRAMES / 2 and skipping["damage_inferences"] < full["damage_inferences"]
