"""The shipped artifact: the model config.yaml points at, and its behaviour on the demo clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_settings
from pipeline.detector import Detector

REPO = Path(__file__).resolve().parents[1]
DEMO_CLIP = REPO / "demo" / "intel_car-detection.mp4"


@pytest.fixture(scope="module")
def shipped():
    settings = load_settings(REPO / "config.yaml")
    return settings, Detector(settings.detector.model, provider="cpu")


def test_config_points_at_the_shipped_model(shipped) -> None:
    settings, detector = shipped
    model = settings.detector.model
    assert model.is_relative_to(REPO / "models") and model.is_file()
    assert model.stat().st_size <= 25 * 1024 * 1024  # two nano models in one graph; the repo carries every shipped model
    imgsz = detector.imgsz[0]
    assert detector.imgsz == (imgsz, imgsz) and model.stem.endswith(f"-{imgsz}") and detector.names == {0: "scratch"} and detector.batch_dynamic
    meta = detector.session.get_modelmeta().custom_metadata_map
    metrics = json.loads(meta["scratchwatch_metrics"])
    assert metrics["split"] == "test" and 0 < metrics["mAP50"] <= 1
    if "scratchwatch_ensemble" in meta:  # each member's export checked parity; the graph is checked against its members
        ensemble = json.loads(meta["scratchwatch_ensemble"])
        assert len(ensemble["members"]) >= 1 and ensemble["max_raw_diff"] < 1e-4
    else:
        assert json.loads(meta["scratchwatch_parity"])["ok"] is True
    assert len(meta["scratchwatch_data_hash"]) == 64
    assert 0 < float(meta["scratchwatch_threshold"]) < 1
    card = (REPO / "models" / "MODEL_CARD.md").read_text()
    assert model.name in card and meta["scratchwatch_data_hash"] in card


def test_demo_clip_raises_no_false_alarm(shipped, tmp_path: Path) -> None:
    """The demo clip shows undamaged cars only: at the shipped threshold, no incident opens."""
    from pipeline.runner import replay_files

    settings, _ = shipped
    settings = settings.model_copy(update={
        "data_dir": tmp_path,
        "database": settings.database.model_copy(update={"url": None}),
        "replay": settings.replay.model_copy(update={"fps": None}),
    })
    report = replay_files(settings, [DEMO_CLIP], progress=False)
    assert report.ok and report.frames >= 370  # every frame of the 30 s, 12.5 fps clip
    assert report.incidents == 0


def test_shipped_car_stage_finds_the_lot_clips_cars() -> None:
    """The car stage on 67 hand-checked frames of the demo clip (overhead view, where COCO's classes fail)."""
    from export.car_eval import car_stage_accuracy, labelled_frames
    from pipeline.cars import CarDetector

    settings = load_settings(REPO / "config.yaml")
    cars = CarDetector(settings.detector.cars, provider="cpu")
    meta = cars.detector.session.get_modelmeta().custom_metadata_map
    assert meta["scratchwatch_tensors_loaded"] == "349" and meta["scratchwatch_role"] == "car"
    frames, truth, _ = labelled_frames(REPO / "bench" / "data" / "lot_cars.json", REPO)
    result = car_stage_accuracy(cars, frames, truth)
    assert (result["frames"], result["cars"]) == (67, 46)
    assert result["precision"] >= 0.95 and result["recall"] >= 0.85, result  # measured 0.976 / 0.891
