"""`scratchwatch bench` end to end on the synthetic models: raw ONNX Runtime, ultralytics' own loop
(when the training extra is installed), two real replays, one paced camera through the supervisor."""

from __future__ import annotations

import json
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from app.bench import camera_clips, camera_counts, decode_frames, detections_match, largest_held
from pipeline.cli import main
from pipeline.latency import LatencyLog
from tests.pipeline.synthetic import Mark, build_red_model, write_clip


@pytest.fixture
def config(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    raw = {"data_dir": str(tmp_path / "data"),
           "detector": {"model": str(build_red_model(models / "red.onnx")), "provider": "cpu", "threads": 1,
                        "car_gate": "off"}}  # whole frames: one replay fewer, the car stage's replay is the same code
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bench_json_has_every_figure_and_the_detections_agree(config: Path, tmp_path: Path, capsys) -> None:
    clip = write_clip(tmp_path / "lot.avi", 20, [Mark(0, 20, (200, 100, 30, 10))], fps=10)
    chart = tmp_path / "bench.png"
    args = ["--config", str(config), "bench", "--clip", str(clip), "--frames", "12", "--cameras", "1",
            "--camera-seconds", "1.5", "--camera-size", "320x240", "--json", "--chart", str(chart)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)  # stdout is the one JSON object, nothing else

    assert set(result["raw_fps"]) == {"batch1", "batch4"} and all(v > 0 for v in result["raw_fps"].values())
    assert result["replay_fps"]["whole_frame"]["frames"] == 20 and result["replay_fps"]["whole_frame"]["fps"] > 0
    assert "car_stage" not in result["replay_fps"]  # the config has no car stage
    if importlib.util.find_spec("ultralytics"):
        assert result["ultralytics_fps"] > 0
        match = result["detections_match"]
        assert match["match"] and match["frames"] == 12 and match["boxes"] == 12  # the mark, in every frame
    else:
        assert result["ultralytics_fps"] is None and "absent" in result["ultralytics"]
    [step] = result["camera_steps"]
    assert step["cameras"] == 1 and step["min_camera_fps"] > 0 and step["p95_latency_ms"] > 0 and step["mean_batch"] >= 1
    assert result["cameras_held"] in (0, 1) and result["camera_size"] == "320x240"
    if importlib.util.find_spec("matplotlib"):
        assert chart.stat().st_size > 1000


def test_bench_names_bad_input_in_one_line(config: Path, tmp_path: Path, capsys) -> None:
    assert main(["--config", str(config), "bench", "--clip", str(tmp_path / "missing.mp4")]) == 1
    assert capsys.readouterr().err.strip() == f"scratchwatch bench: clip {tmp_path / 'missing.mp4'} not found"
    clip = write_clip(tmp_path / "lot.avi", 2, [])
    assert main(["--config", str(config), "bench", "--clip", str(clip), "--camera-size", "big"]) == 1
    assert "--camera-size" in capsys.readouterr().err


def test_detections_match_tolerates_2px_and_001_but_not_more() -> None:
    box = np.array([[10, 10, 50, 40, 0.8]], np.float32)
    assert detections_match([box, box[:0]], [box + [1.5, -1.5, 1, 0, 0.005], box[:0]])["match"]
    moved = detections_match([box], [box + [2.5, 0, 0, 0, 0]])
    assert not moved["match"] and moved["mismatched_frames"] == [0] and moved["max_box_diff_px"] == 2.5
    assert not detections_match([box], [box + [0, 0, 0, 0, 0.02]])["match"]
    assert not detections_match([box], [np.concatenate([box, box + 100])])["match"]  # one box more
    assert detections_match([box[:0], box[:0]], [box[:0], box[:0]])["match"] is None  # no box either side: nothing shown
    assert detections_match([box[:0]], [box])["match"] is False


def test_camera_counts_double_up_to_the_limit() -> None:
    assert camera_counts(1) == [1] and camera_counts(8) == [1, 2, 4, 8] and camera_counts(6) == [1, 2, 4, 6]


def test_the_largest_count_held_is_bisected_between_the_last_held_and_the_first_failing() -> None:
    for capacity, tried in ((5, [1, 2, 4, 8, 6, 5]), (4, [1, 2, 4, 8, 6, 5]), (7, [1, 2, 4, 8, 6, 7]), (8, [1, 2, 4, 8]),
                            (0, [1]), (2, [1, 2, 4, 3])):
        calls: list[int] = []
        held = largest_held(8, lambda n: calls.append(n) or n <= capacity)
        assert held == capacity and calls == tried


def test_latency_log_percentiles_per_camera_in_a_bounded_window() -> None:
    log = LatencyLog(window=100)
    import time

    now = time.time_ns()
    for i in range(200):
        log.add("a", now - (i % 100) * 1_000_000)  # 0..99 ms old
    log.add("b", now - 5_000_000)
    summary = log.summary()
    assert summary["a"]["frames"] == 200 and 90 <= summary["a"]["p95"] < 110 and 45 <= summary["a"]["p50"] < 60
    assert summary["b"]["frames"] == 1 and summary["b"]["fps"] == 0.0 and summary["b"]["p50"] >= 5


def _flat_clip(path: Path, frames: int) -> Path:
    """Frame i is flat grey 10 * i: which frame a camera shows can be read off its mean."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for index in range(frames):
        writer.write(np.full((48, 64, 3), 10 * index, np.uint8))
    writer.release()
    return path


def _levels(path: Path) -> list[int]:
    return [round(float(frame.mean()) / 10) for frame in decode_frames(path, 1000)]


def test_phased_cameras_start_i_over_n_into_the_clip_and_loop_in_phase_ones_all_start_at_its_beginning(tmp_path: Path) -> None:
    clip = _flat_clip(tmp_path / "flat.avi", 20)
    phased = camera_clips(clip, tmp_path, 4, 2.5, (32, 24), phased=True)  # 25 frames each: the clip and 5 more
    assert [_levels(path) for path in phased] == [[(start + i) % 20 for i in range(25)] for start in (0, 5, 10, 15)]
    [together] = camera_clips(clip, tmp_path, 4, 1.0, (32, 24), phased=False)
    assert _levels(together) == list(range(10))
    assert cv2.VideoCapture(str(together)).get(cv2.CAP_PROP_FRAME_WIDTH) == 32
