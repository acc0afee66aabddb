"""`scratchwatch evaluate` end to end: a real ONNX model through the pipeline's detector, a dataset
from two sources, clips replayed through the real pipeline, and a threshold sweep."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.dataset import build_dataset
from export.evaluate import ThresholdRule, run_evaluation
from export.onnx_export import read_metadata
from tests.export.conftest import photo, write_label
from pipeline.cli import main
from pipeline.config import DetectorConfig
from pipeline.detector import THRESHOLD_KEY
from tests.pipeline.synthetic import RED_BGR, Mark, build_car_model, build_red_model, write_clip

SIZE = (200, 160)  # w, h
MARK = (60, 70, 50, 12)  # x, y, w, h in pixels


def _source(root: Path, seeds: range, *, label_elsewhere: bool) -> Path:
    """Grey textured photos with a red mark; one source labels the mark, the other a bare spot."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    x, y, w, h = MARK
    for seed in seeds:
        grey = cv2.cvtColor(cv2.cvtColor(photo(seed, SIZE[::-1]), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        cv2.rectangle(grey, (x, y), (x + w - 1, y + h - 1), RED_BGR, -1)
        cv2.imwrite(str(root / "images" / f"p{seed}.png"), grey)
        cx, cy = (x + w / 2, y + h / 2) if not label_elsewhere else (170.0, 20.0)
        write_label(root / "labels" / f"p{seed}.txt", [(cx / SIZE[0], cy / SIZE[1], w / SIZE[0], h / SIZE[1])])
    return root


def test_evaluate_scores_by_source_replays_clips_and_sweeps(tmp_path: Path) -> None:
    alpha = _source(tmp_path / "alpha", range(0, 4), label_elsewhere=False)
    beta = _source(tmp_path / "beta", range(10, 14), label_elsewhere=True)
    data = tmp_path / "data"
    build_dataset([alpha, beta], data, fractions={"train": 0.0, "val": 0.0, "test": 1.0}, progress=False)
    model = build_red_model(tmp_path / "red.onnx", imgsz=128)
    clean = write_clip(tmp_path / "clips" / "clean.avi", 12, [])
    marked = write_clip(tmp_path / "clips" / "marked.avi", 12, [Mark(0, 12, (100, 100, 40, 10))])
    broken = tmp_path / "clips" / "broken.avi"
    broken.write_text("not a video")  # nothing of it is analysed: an error, never "no false alarms"

    out = tmp_path / "eval"
    base = DetectorConfig(cars={"model": build_car_model(tmp_path / "car.onnx"), "inspect_every_s": 0})  # finds the clips' blue car
    report = run_evaluation(model, data, threshold=0.5, clips=[clean, marked, broken], out_dir=out, provider="cpu",
                            sweep=[0.3, 0.5, 0.6], base=base)  # 0.5 reuses the replay at the shipped threshold

    metrics = report.metrics
    assert (metrics["images"], metrics["ground_truth_boxes"]) == (8, 8)
    assert metrics["by_source"]["alpha"]["mAP50"] > 0.9  # the mark is found where alpha says it is
    assert metrics["by_source"]["beta"]["mAP50"] == 0.0  # beta's boxes mark bare spots
    assert 0.3 < metrics["mAP50"] < 0.9 and metrics["shipped"]["threshold"] == 0.5
    assert metrics["gate"] == "photo" and metrics["no_car_gate"]["by_source"]["alpha"]["mAP50"] > 0.9  # grey photos: no car
    assert report.clips["clean.avi"]["incidents"] == 0 and report.clips["marked.avi"]["incidents"] == 1
    assert [row["threshold"] for row in report.sweep] == [0.3, 0.5, 0.6]
    assert "OpenCV cannot open it" in report.clips["broken.avi"]["error"]
    for row in report.sweep:
        assert row["false_alarms"] == {"clean.avi": 0, "marked.avi": 1} and list(row["errors"]) == ["broken.avi"]
        assert row["total_false_alarms"] is None, "a clip not analysed makes the total unknown, not zero"
        assert row["recall"] == 0.5  # alpha's four of eight boxes
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["sweep"] == report.sweep and (out / "pr_curve.png").stat().st_size > 0
    assert (out / "pr_curve_no_car_gate.png").stat().st_size > 0


def _undamaged(root: Path, seeds: range) -> Path:
    """Photos with a duller red mark (the red model scores it about 0.84) but no box: every detection
    on them is a false alarm."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    x, y, w, h = MARK
    for seed in seeds:
        grey = cv2.cvtColor(cv2.cvtColor(photo(seed, SIZE[::-1]), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        cv2.rectangle(grey, (x, y), (x + w - 1, y + h - 1), (60, 60, 200), -1)
        cv2.imwrite(str(root / "images" / f"u{seed}.png"), grey)
        write_label(root / "labels" / f"u{seed}.txt", [])
    return root


def test_a_sweep_without_clips_lists_each_threshold_and_embed_stores_the_chosen_one(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    build_dataset([_source(tmp_path / "alpha", range(0, 4), label_elsewhere=False), _undamaged(tmp_path / "clean", range(20, 25))],
                  data, fractions={"train": 0.0, "val": 0.5, "test": 0.5}, progress=False)  # embed reads val too
    model = build_red_model(tmp_path / "red.onnx", imgsz=128)

    report = run_evaluation(model, data, threshold=0.5, clips=[], out_dir=tmp_path / "eval", provider="cpu", sweep=[0.5, 0.95])

    low, high = report.sweep
    assert low["recall"] == 1.0 and low["total_false_alarms"] is None, "no clip replayed: no false-alarm count, not zero"
    clean = low["background"]["clean"]
    assert clean["photos"] > 0 and clean["false_detections"] == clean["photos"] and clean["per_50_photos"] == 50.0  # the mark on each
    assert high["recall"] == 1.0 and high["background"]["clean"]["false_detections"] == 0  # the bright marks only

    before = read_metadata(model)[THRESHOLD_KEY] if THRESHOLD_KEY in read_metadata(model) else None
    assert main(["evaluate", str(model), str(data), "--clips", "--threshold", "0.42", "--embed", "--sweep", "0.42",
                 "--out", str(tmp_path / "eval2"), "--provider", "cpu"]) == 0
    assert "clean 50/50" in capsys.readouterr().out
    assert before != "0.42" and read_metadata(model)[THRESHOLD_KEY] == "0.42"
    assert json.loads(read_metadata(model)["scratchwatch_metrics"])["shipped"]["threshold"] == 0.42


def test_embed_needs_the_threshold_it_stores(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "m.onnx"), str(tmp_path), "--clips", "--embed"]) == 2
    assert "--embed stores the operating threshold: give --threshold" in capsys.readouterr().err


def test_embed_stores_nothing_when_a_clip_was_not_analysed(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    build_dataset([_source(tmp_path / "alpha", range(0, 4), label_elsewhere=False)], data,
                  fractions={"train": 0.0, "val": 0.5, "test": 0.5}, progress=False)
    model = build_red_model(tmp_path / "red.onnx", imgsz=128)
    broken = tmp_path / "broken.avi"
    broken.write_text("not a video")
    before = model.read_bytes()

    assert main(["evaluate", str(model), str(data), "--clips", str(broken), "--threshold", "0.42", "--embed",
                 "--out", str(tmp_path / "eval"), "--provider", "cpu"]) == 1

    assert f"nothing embedded in {model}: a clip was not analysed to its end" in capsys.readouterr().err
    assert model.read_bytes() == before


def _rule_data(tmp_path: Path) -> Path:
    """val and test each with bright labelled marks (the red model scores 1.0) and dull unlabelled ones (0.84)."""
    data = tmp_path / "data"
    build_dataset([_source(tmp_path / "alpha", range(0, 6), label_elsewhere=False), _undamaged(tmp_path / "clean", range(20, 26))],
                  data, fractions={"train": 0.0, "val": 0.5, "test": 0.5}, progress=False)
    return data


def test_the_rule_chooses_the_lowest_grid_threshold_with_the_precision_and_no_clip_incident(tmp_path: Path) -> None:
    data = _rule_data(tmp_path)
    model = build_red_model(tmp_path / "red.onnx", imgsz=128)
    base = DetectorConfig(cars={"model": build_car_model(tmp_path / "car.onnx"), "inspect_every_s": 0})
    clean = write_clip(tmp_path / "clips" / "clean.avi", 12, [])
    marked = write_clip(tmp_path / "clips" / "marked.avi", 12, [Mark(0, 12, (100, 100, 40, 10))])

    report = run_evaluation(model, data, split="val", clips=[clean], out_dir=tmp_path / "a", provider="cpu", base=base,
                            rule=ThresholdRule(0.6))

    # below 0.85 the dull marks (0.84) are false detections on every photo without damage: precision and the
    # per-50 bound both fail; 0.85 is the first grid point above them
    assert report.chosen["threshold"] == 0.85 and report.metrics["shipped"]["threshold"] == 0.85
    assert report.chosen["tried"] == [{"threshold": 0.85, "precision": 1.0, "recall": 1.0, "false_alarms": 0, "errors": {}}]
    assert report.clips["clean.avi"]["incidents"] == 0

    raising = run_evaluation(model, data, split="val", clips=[marked], out_dir=tmp_path / "b", provider="cpu", base=base,
                             rule=ThresholdRule(0.6, max_replays=2))
    assert raising.chosen["threshold"] is None, "every candidate raised the marked clip's incident"
    assert [t["threshold"] for t in raising.chosen["tried"]] == [0.85, 0.86] and {t["false_alarms"] for t in raising.chosen["tried"]} == {1}


def test_choose_and_embed_on_the_command_line(tmp_path: Path, capsys) -> None:
    data = _rule_data(tmp_path)
    model = build_red_model(tmp_path / "red.onnx", imgsz=128)

    assert main(["evaluate", str(model), str(data), "--split", "val", "--clips", "--choose", "0.6", "--embed",
                 "--out", str(tmp_path / "eval"), "--provider", "cpu"]) == 0

    assert "chosen threshold 0.85" in capsys.readouterr().out and read_metadata(model)[THRESHOLD_KEY] == "0.85"
    assert main(["evaluate", str(model), str(data), "--clips", "--choose", "0.6", "--threshold", "0.4"]) == 2
    assert "--threshold and --choose both set the threshold" in capsys.readouterr().err


def test_the_config_given_to_evaluate_sets_its_car_stage_and_tiles(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for folder in ("images", "labels"):
        (data / folder / "test").mkdir(parents=True)
    for k in range(3):  # photos without damage but for a 6 px red speck: a false alarm wherever it is found
        image = np.full((480, 640, 3), (90, 95, 100), np.uint8)
        x, y = 420 + 20 * k, 330 + 10 * k
        cv2.rectangle(image, (x, y), (x + 5, y + 5), RED_BGR, -1)  # under 2 px at the red model's 128 px input
        cv2.imwrite(str(data / "images" / "test" / f"speck{k}.png"), image)
        write_label(data / "labels" / "test" / f"speck{k}.txt", [])
    model, car = build_red_model(tmp_path / "red.onnx"), build_car_model(tmp_path / "car.onnx")
    found = {}
    for tiles in (0, 2):
        config = tmp_path / f"tiles{tiles}.yaml"
        config.write_text(f"detector:\n  cars:\n    model: {car}\n    tiles: {tiles}\n")
        out = tmp_path / f"eval{tiles}"
        assert main(["--config", str(config), "evaluate", str(model), str(data), "--clips", "--threshold", "0.3",
                     "--out", str(out), "--provider", "cpu"]) == 0
        background = json.loads((out / "metrics.json").read_text())["metrics"]["background"]
        found[tiles] = sum(source["false_detections"] for source in background.values())
    assert found == {0: 0, 2: 3}  # only the config's tiles give the specks enough pixels to be seen
