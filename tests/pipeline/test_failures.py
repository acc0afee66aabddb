"""The failure policy end to end: real processes killed for real, a real PostgreSQL stopped and
started, the durable spool in between. Nothing that reached the incidents stage is lost, and
nothing is stored twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.runner import Supervisor, replay_files, replay_specs
from storage.db import connect
from storage.spool import SPOOL_FILENAME
from tests.conftest import PostgresCluster
from tests.pipeline.conftest import CLIP_MARKS
from tests.pipeline.synthetic import Mark, write_clip
from tests.pipeline.test_replay import _count_rows, run_cli, stored


def spooled_open(spool: Path) -> set[str]:
    """Uids of the incidents the spool knows to be open (read as another process would)."""
    try:
        with sqlite3.connect(spool, timeout=0.1) as conn:
            return {uid for (uid,) in conn.execute("SELECT uid FROM open_incidents")}
    except sqlite3.Error:
        return set()


@pytest.mark.parametrize("database", ["locked", "up"])
def test_sigkill_of_the_whole_replay_then_restart_stores_every_incident_exactly_once_and_closed(
    make_settings, two_mark_clip: Path, tmp_path: Path, database: str
) -> None:
    """SIGKILL while the first incident is open: with the database locked, its records exist only
    in the spool; with the database up, its row is committed but open. The next run drains the
    spool and closes what the crash left open."""
    settings = make_settings()
    connect(settings.database_url).dispose()
    spool = settings.data_dir / SPOOL_FILENAME
    holder = sqlite3.connect(settings.data_dir / "scratchwatch.db", isolation_level=None)
    if database == "locked":
        holder.execute("BEGIN IMMEDIATE")
    proc = run_cli("--config", "config.yaml", "replay", "--realtime", "--no-progress", str(two_mark_clip), cwd=tmp_path,
                   start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not spooled_open(spool) or (database == "up" and not _count_rows(settings.data_dir / "scratchwatch.db")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        open_at_kill = spooled_open(spool)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        holder.close()
    assert len(open_at_kill) == 1
    assert [r.uid for r in stored(settings.database_url)] == ([] if database == "locked" else list(open_at_kill))

    clean = write_clip(tmp_path / "clean.avi", 5, [])
    report = replay_files(settings, [clean], progress=False)  # the restart

    assert report.ok, report.problems
    rows = stored(settings.database_url)
    assert [r.uid for r in rows] == list(open_at_kill), "exactly once"
    assert rows[0].first_media_time_s == CLIP_MARKS[0].start / 10
    assert rows[0].closed_at is not None and rows[0].closed_at >= rows[0].opened_at
    assert not spooled_open(spool)
    with sqlite3.connect(spool) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 0


@pytest.mark.postgres
def test_postgresql_stopped_for_10_s_mid_run_loses_and_duplicates_nothing(
    make_settings, two_mark_clip: Path, postgres_cluster: PostgresCluster, capfd: pytest.CaptureFixture[str]
) -> None:
    postgres_cluster.start()
    settings = make_settings(database={"url": postgres_cluster.url()})
    supervisor = Supervisor(settings, replay_specs(settings, [two_mark_clip], realtime=True))
    outage: list[threading.Thread] = []

    def stop_for_10_s() -> None:
        postgres_cluster.stop()
        time.sleep(10)
        postgres_cluster.start()

    def once_the_first_incident_opened(sup: Supervisor) -> None:
        if sup.results["replay:lot"].incidents >= 1 and not outage:
            outage.append(threading.Thread(target=stop_for_10_s, daemon=True))
            outage[0].start()

    report = supervisor.run(on_progress=once_the_first_incident_opened)
    outage[0].join(30)

    assert report.ok, report.problems
    assert report.stages["incidents"]["db_retries"] >= 1
    rows = stored(settings.database_url)
    assert [r.first_media_time_s for r in rows] == [m.start / 10 for m in CLIP_MARKS]
    assert len({r.uid for r in rows}) == 2 and all(r.closed_at is not None for r in rows)
    err = capfd.readouterr().err
    assert err.count("database unavailable") == 1 and err.count("database available again") == 1


def build_broken_model(path: Path, imgsz: int = 64) -> Path:
    """A model that passes the detector's start check (all-zero input: output [1, 5, 0]) and fails
    on every real frame, as a model broken by its inputs, a CUDA error or out of memory would: it
    reshapes the indices of the non-zero pixels (4 per pixel, every pixel of a letterboxed frame
    is non-zero) into rows of 5, which 4 x B x 3 x 64 x 64 never fills for a batch of 1 to 4."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = numpy_helper.from_array(np.array([1, 5, -1], np.int64), "rows")
    graph = helper.make_graph(
        [
            helper.make_node("NonZero", ["images"], ["where"]),
            helper.make_node("Cast", ["where"], ["where_f"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["where_f", "rows"], ["output0"]),
        ],
        "broken",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, "n"])],
        [rows],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value="{0: 'scratch'}")
    onnx.save(model, str(path))
    return path


def test_a_detector_failing_every_frame_fails_the_replay_within_a_few_frames(make_settings, tmp_path: Path) -> None:
    from pipeline.inference import MAX_FAILURES_IN_A_ROW

    make_settings(detector={"model": str(build_broken_model(tmp_path / "broken.onnx")), "car_gate": "off"})
    clip = write_clip(tmp_path / "long.avi", 200, [])
    proc = run_cli("--config", "config.yaml", "replay", "--no-progress", str(clip), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert f"failed on {MAX_FAILURES_IN_A_ROW} frames in a row" in err
    assert err.count("frame") < 40, "no per-frame retry storm in the log"
    assert "restarting" not in err, "a replay never restarts a stage (it would double-count): it fails"
    assert "ok" not in out.split()


def test_tiny_videos_end_by_acknowledgement_with_every_frame_analysed(make_settings, tmp_path: Path) -> None:
    """With 1x1 and 16x16 frames many messages sit in socket buffers when capture finishes: its
    EOS waits for inference to confirm every one arrived, instead of trusting linger."""
    make_settings()
    clips = [write_clip(tmp_path / f"tiny{side}.avi", 50, [], size=(side, side)) for side in (1, 16)]
    proc = run_cli("--config", "config.yaml", "replay", "--no-progress", *map(str, clips), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"{clip.resolve()}: 50 frames, 0 incidents, ok" for clip in clips]


def test_a_4000x3000_video_replays_with_every_frame_analysed(make_settings, tmp_path: Path) -> None:
    """36 MB frames: a handful fill every socket buffer between the stages; the end is still
    acknowledged on both links and the damage on the car is found at full resolution."""
    make_settings()
    clip = write_clip(tmp_path / "huge.avi", 4, [Mark(0, 4, (200, 100, 30, 10))], size=(4000, 3000))
    proc = run_cli("--config", "config.yaml", "replay", "--no-progress", str(clip), cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"{clip.resolve()}: 4 frames, 1 incidents, ok"]


def test_a_stop_injected_into_the_frames_socket_by_another_process_is_ignored_and_counted(
    make_settings, two_mark_clip: Path
) -> None:
    import subprocess
    import sys

    settings = make_settings()
    supervisor = Supervisor(settings, replay_specs(settings, [two_mark_clip], realtime=True))
    injected: list[int] = []

    def inject_once(sup: Supervisor) -> None:
        if not injected and sup.results["replay:lot"].frames >= 5:
            code = ("import sys, zmq; from pipeline.messages import StopHeader, encode_control; "
                    "s = zmq.Context().socket(zmq.PUSH); s.connect(sys.argv[1]); "
                    "s.send_multipart(encode_control(StopHeader())); s.close(linger=2000)")
            injected.append(subprocess.run([sys.executable, "-c", code, sup.endpoints.frames], timeout=30).returncode)

    report = supervisor.run(on_progress=inject_once)
    assert injected == [0]
    assert report.ok, report.problems
    assert report.files[0].frames == 60 and report.incidents == 2
    assert report.stages["inference"]["foreign_control"] == 1


def test_a_stalled_stage_fails_the_run_naming_it(make_settings, two_mark_clip: Path) -> None:
    """SIGSTOP: the process exists but does nothing, which only the missing heartbeat shows."""
    from pipeline.runner import PipelineError

    settings = make_settings(transport={"stall_timeout_s": 2})
    supervisor = Supervisor(settings, replay_specs(settings, [two_mark_clip], realtime=True))
    stopped: list[float] = []

    def stop_inference(sup: Supervisor) -> None:
        if not stopped and sup.results["replay:lot"].frames >= 3:
            os.kill(sup._processes["inference"].pid, signal.SIGSTOP)
            stopped.append(time.monotonic())

    with pytest.raises(PipelineError, match=r"inference stage stalled: no heartbeat for \d+ s"):
        supervisor.run(on_progress=stop_inference)
    assert time.monotonic() - stopped[0] < 15


def test_a_stopped_incidents_stage_makes_a_replay_wait_never_drop(make_settings, two_mark_clip: Path) -> None:
    """The live send timeout is for live cameras only: a replay is lossless, whatever incidents does."""
    settings = make_settings(transport={"live_send_timeout_s": 0.1})
    supervisor = Supervisor(settings, replay_specs(settings, [two_mark_clip], realtime=True))
    paused: list[float] = []

    def pause_incidents_for_2_s(sup: Supervisor) -> None:
        if not paused and sup.results["replay:lot"].frames >= 10:
            os.kill(sup.stage_pids["incidents"], signal.SIGSTOP)
            paused.append(time.monotonic())
        elif len(paused) == 1 and time.monotonic() - paused[0] > 2:
            os.kill(sup.stage_pids["incidents"], signal.SIGCONT)
            paused.append(time.monotonic())

    report = supervisor.run(on_progress=pause_incidents_for_2_s)
    assert len(paused) == 2
    assert report.ok, report.problems
    assert report.files[0].frames == 60 and report.incidents == 2
    assert report.stages["inference"]["undelivered"] == {}


def test_below_the_disk_reserve_snapshots_are_refused_and_every_record_is_committed(
    make_settings, two_mark_clip: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A reserve larger than the real free space of the data disk: the replay still commits every
    incident; no JPEG is written; the refusals are counted and logged once for the episode."""
    import shutil

    settings = make_settings()
    connect(settings.database_url).dispose()
    free_mb = shutil.disk_usage(settings.data_dir).free / 1e6
    settings = make_settings(database={"spool_reserve_mb": free_mb * 2})
    report = replay_files(settings, [two_mark_clip], progress=False)

    assert report.ok, report.problems
    rows = stored(settings.database_url)
    assert len(rows) == 2 and all(r.closed_at is not None and r.snapshot_path is None for r in rows)
    assert not list(settings.data_dir.rglob("*.jpg"))
    assert report.stages["incidents"]["snapshots_refused"] >= 2
    err = capfd.readouterr().err
    assert err.count("below database.spool_reserve_mb") == 1, err
