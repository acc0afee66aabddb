"""Supervision of a live run: real stage processes SIGKILLed and SIGSTOPped, a real loopback camera
(ffmpeg), the real spool and SQLite. A failed stage is restarted with backoff, counted and logged;
what the incidents stage had accepted survives in the spool; a crash loop ends the run loudly."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.capture import SourceSpec
from pipeline.runner import PipelineError, Supervisor
from storage.db import connect
from storage.spool import SPOOL_FILENAME
from tests.pipeline.synthetic import Mark, write_clip
from tests.pipeline.test_camera_recovery import FFMPEG, StreamServer, _free_port
from tests.pipeline.test_failures import build_broken_model, spooled_open
from tests.pipeline.test_replay import stored

pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg; `make system-deps` does)")


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[SourceSpec]:
    """A live camera on loopback whose scratch never leaves the picture: an incident stays open."""
    clip = write_clip(tmp_path / "gate.mp4", 30, [Mark(0, 30, (120, 100, 30, 12))], size=(320, 240))
    server = StreamServer(clip, _free_port())
    server.start("320:240")
    yield SourceSpec(camera="gate", source=f"tcp://127.0.0.1:{server.port}", fps=10)
    server.kill()


def _live_settings(make_settings, **sections):
    defaults = {"detector": {"car_gate": "off"}, "tracker": {"min_hits": 2, "max_missed": 3},
                "capture": {"reconnect_initial_s": 0.2, "open_timeout_s": 2},
                "supervisor": {"restart_initial_s": 0.2}, "metrics": {"port": 0}}
    return make_settings(**{key: {**defaults.get(key, {}), **sections.get(key, {})} for key in {*defaults, *sections}})


def test_a_killed_and_a_stalled_stage_are_restarted_counted_logged_and_lose_no_accepted_incident(
    make_settings, camera: SourceSpec, caplog: pytest.LogCaptureFixture
) -> None:
    from app.metrics import MetricsExporter

    settings = _live_settings(make_settings, transport={"stall_timeout_s": 3})
    connect(settings.database_url).dispose()
    spool = settings.data_dir / SPOOL_FILENAME
    holder = sqlite3.connect(settings.data_dir / "scratchwatch.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the database is locked: the open incident exists only in the spool
    metrics = MetricsExporter(settings.metrics)
    metrics.start()
    stop = threading.Event()
    supervisor = Supervisor(settings, [camera], stop, [metrics], restart=True)
    seen: dict[str, object] = {}

    def script(sup: Supervisor) -> None:
        analysed = sup.results["gate"].frames
        if "killed" not in seen and spooled_open(spool):
            seen["open_at_kill"] = spooled_open(spool)
            os.kill(sup.stage_pids["incidents"], signal.SIGKILL)
            seen["killed"] = analysed
        elif "killed" in seen and "stalled" not in seen and sup.restarts["incidents"] and not sup.restarting:
            holder.rollback()  # the database is back: the adopted records get written
            os.kill(sup.stage_pids["inference"], signal.SIGSTOP)
            seen["stalled"] = analysed
        elif "stalled" in seen and "metrics" not in seen and sup.restarts["inference"] and not sup.restarting and analysed > seen["stalled"]:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=5) as response:
                seen["metrics"] = response.read().decode()
            stop.set()

    with caplog.at_level(logging.ERROR, logger="pipeline.runner"):
        try:
            report = supervisor.run(on_progress=script)
        finally:
            holder.close()
            metrics.on_stop(supervisor)

    assert report.ok, report.problems
    assert dict(supervisor.restarts) == {"incidents": 1, "inference": 1}
    restarts = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    assert len(restarts) == 2, restarts
    assert restarts[0].startswith("incidents stage stopped unexpectedly: exit code -9; restarting it in")
    assert restarts[1].startswith("inference stage stalled: no heartbeat for")
    assert 'scratchwatch_stage_restarts_total{stage="incidents"} 1.0' in str(seen["metrics"])
    assert 'scratchwatch_stage_restarts_total{stage="inference"} 1.0' in str(seen["metrics"])
    rows = stored(settings.database_url)
    [accepted] = seen["open_at_kill"]  # type: ignore[misc]
    assert [r.uid for r in rows].count(accepted) == 1, "the incident open at the SIGKILL is stored exactly once"
    assert len({r.uid for r in rows}) == len(rows) and all(r.closed_at is not None for r in rows)
    assert not spooled_open(spool)


def test_a_crash_loop_fails_the_live_run_loudly(make_settings, camera: SourceSpec, tmp_path: Path) -> None:
    """A broken model fails the inference stage on every start: restarted once, then the run ends."""
    settings = _live_settings(make_settings, supervisor={"max_restarts": 1})
    settings = settings.model_copy(update={"detector": settings.detector.model_copy(
        update={"model": build_broken_model(tmp_path / "broken.onnx")})})
    supervisor = Supervisor(settings, [camera], restart=True)
    with pytest.raises(PipelineError, match=r"inference stage failed: the detector failed on \d+ frames in a row.*"
                                            r"not restarting it again: 1 restart\(s\) within 600 s"):
        supervisor.run()
    assert supervisor.restarts["inference"] == 1


def test_a_stuck_incidents_stage_never_blocks_inference_on_a_live_camera(make_settings, camera: SourceSpec) -> None:
    """SIGSTOP the incidents stage: inference goes on analysing the live camera and drops what incidents
    cannot take (counted for the camera) instead of blocking; once it resumes, detections flow again."""
    settings = _live_settings(make_settings, transport={"live_send_timeout_s": 0.2})
    stop = threading.Event()
    supervisor = Supervisor(settings, [camera], stop, restart=True)
    seen: dict[str, float] = {}

    def script(sup: Supervisor) -> None:
        inference = sup.stages.get("inference", {})
        if "stopped_at" not in seen and sup.results["gate"].frames >= 3:
            os.kill(sup.stage_pids["incidents"], signal.SIGSTOP)
            seen.update(stopped_at=time.monotonic(), frames_at_stop=inference.get("frames", 0))
        elif "stopped_at" in seen and "resumed" not in seen and time.monotonic() - seen["stopped_at"] > 4:
            seen.update(analysed_while_stopped=inference["frames"] - seen["frames_at_stop"],
                        undelivered=inference["undelivered"].get("gate", 0), resumed=sup.results["gate"].frames)
            os.kill(sup.stage_pids["incidents"], signal.SIGCONT)
        elif "resumed" in seen and sup.results["gate"].frames > seen["resumed"] + 3:
            stop.set()

    report = supervisor.run(on_progress=script)
    assert report.ok, report.problems
    assert seen["undelivered"] >= 5, seen
    assert seen["analysed_while_stopped"] >= seen["undelivered"], "inference kept analysing, it never blocked"
    assert report.stages["inference"]["undelivered"]["gate"] >= seen["undelivered"]
    assert not supervisor.restarts
