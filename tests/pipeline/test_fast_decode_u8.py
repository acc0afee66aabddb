"""The GPU path's second round (issue 11): the classic head decoded objectness-first (the car
stage's 108 ms a batch), uint8-input model copies (a batch crosses to the GPU as bytes), and the
letterbox pool scaling with the cores. Every fast path is checked against the slow one it replaces,
on seeded random heads and on real ONNX Runtime sessions of the tests' tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.cars import CarDetector
from pipeline.config import CarStageConfig, DetectorConfig
from pipeline.detector import (
    MAX_NMS_CANDIDATES,
    DeviceBinding,
    Detector,
    decode_batch,
    decode_classic,
    model_variant,
    nms_keep,
    preprocess_workers,
    to_rows,
)
from tests.pipeline.synthetic import Mark, build_car_model, build_red_model, scene

COCO_NAMES = {i: f"class{i}" for i in range(80)} | {0: "person", 2: "car", 3: "motorcycle", 5: "bus", 7: "truck"}


# ---- the decode before this change, kept verbatim as the reference ------------------------------------

def old_decode_batch(rows: np.ndarray, conf_threshold: float, iou_threshold: float) -> list[np.ndarray]:
    scores = rows[:, :, 4:]
    if scores.shape[2] == 1:
        cls, conf = np.zeros(scores.shape[:2], np.int64), scores[:, :, 0]
    else:
        cls = scores.argmax(axis=2)
        conf = np.take_along_axis(scores, cls[..., None], axis=2)[..., 0]
    image, anchor = np.nonzero(conf >= conf_threshold)
    order = np.lexsort((-conf[image, anchor], image))
    image, anchor = image[order], anchor[order]
    rank = np.arange(len(image)) - np.searchsorted(image, image)
    image, anchor = image[rank < MAX_NMS_CANDIDATES], anchor[rank < MAX_NMS_CANDIDATES]
    cx, cy, w, h = (rows[image, anchor, i] for i in range(4))
    score = conf[image, anchor]
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score, cls[image, anchor]], axis=1)
    dets = out.astype(np.float32, copy=False).reshape(-1, 6)
    parts = np.split(dets, np.searchsorted(image, np.arange(1, len(rows))))
    return [part[nms_keep(part, iou_threshold)] if len(part) > 1 else part for part in parts]


def old_car_decode(car: CarDetector, raw: np.ndarray) -> list[np.ndarray]:
    rows = np.stack([car.score_rows(image_raw) for image_raw in raw])
    return old_decode_batch(rows, car.config.conf_threshold, car.config.iou_threshold)


def classic_head(seed: int, batch: int = 4, anchors: int = 3200, nc: int = 80, imgsz: int = 416) -> np.ndarray:
    """A realistic classic head: sigmoid objectness mostly near 0, sigmoid class probabilities, and
    the edge cases: rows exactly at the thresholds used, probabilities of exactly 0 and 1, equal
    scores (anchor order decides), an image without a candidate, an image over MAX_NMS_CANDIDATES."""
    rng = np.random.default_rng(seed)
    raw = np.empty((batch, anchors, 5 + nc), np.float32)
    raw[..., 0:2] = rng.uniform(0, imgsz, (batch, anchors, 2))
    raw[..., 2:4] = rng.uniform(2, imgsz / 3, (batch, anchors, 2))
    raw[..., 4] = 1 / (1 + np.exp(-rng.normal(-4, 3, (batch, anchors))))
    raw[..., 5:] = 1 / (1 + np.exp(-rng.normal(-2, 2.5, (batch, anchors, nc))))
    raw[1, :, 4] = 0.0  # no candidate
    if batch > 2:
        raw[2, :, 4] = rng.uniform(0.9, 1.0, anchors)  # every row over: more than MAX_NMS_CANDIDATES at 0
    edge = 3 if batch > 3 else 0  # the edge rows on boxes apart from each other, so NMS keeps them all
    raw[edge, :, 4] = np.minimum(raw[edge, :, 4], 0.01)
    raw[edge, :80, 0] = 10 + 25 * (np.arange(80) % 16)
    raw[edge, :80, 1] = 10 + 25 * (np.arange(80) // 16)
    raw[edge, :80, 2:4] = 8.0
    raw[edge, :40, 4] = np.float32(0.25)  # exactly at the threshold
    raw[edge, :20, 5:] = 0.0
    raw[edge, :20, 5 + min(2, nc - 1)] = 1.0  # car probability exactly 1: score == objectness == threshold
    raw[edge, 40:60, 4] = np.float32(0.3)
    raw[edge, 40:60, 5:] = np.float32(0.5)  # equal scores in every class: argmax and anchor order decide
    raw[edge, 60:70, 4] = np.float32(0.8)
    raw[edge, 60:70, 5] = 1.0  # persons
    raw[edge, 70:80, 4] = 0.0  # objectness 0: only a threshold of 0 keeps them
    return raw


def assert_same(new: list[np.ndarray], old: list[np.ndarray]) -> None:
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# ---- classic head: objectness first -----------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.25, 0.3, 0.9, 1.0])
def test_classic_decode_filters_by_objectness_first_with_the_same_detections(seed: int, threshold: float) -> None:
    raw = classic_head(seed)
    assert_same(decode_classic(raw, threshold, 0.45), old_decode_batch(to_rows(raw, 80), threshold, 0.45))


def test_the_detector_decodes_a_classic_head_objectness_first_and_an_ultralytics_one_as_before() -> None:
    detector = Detector.__new__(Detector)
    detector.names, detector.conf_threshold, detector.iou_threshold = COCO_NAMES, 0.25, 0.45
    raw = classic_head(3)
    assert_same(detector.decode(raw), old_decode_batch(to_rows(raw, 80), 0.25, 0.45))
    detector.names = {0: "scratch"}
    ultralytics = np.ascontiguousarray(classic_head(4, nc=1)[..., [0, 1, 2, 3, 5]].transpose(0, 2, 1))
    assert_same(detector.decode(ultralytics), old_decode_batch(to_rows(ultralytics, 1), 0.25, 0.45))


def test_classic_decode_of_an_empty_and_a_single_class_head() -> None:
    empty = np.zeros((2, 0, 85), np.float32)
    assert_same(decode_classic(empty, 0.25, 0.45), old_decode_batch(to_rows(empty, 80), 0.25, 0.45))
    one = classic_head(5, nc=1)
    assert_same(decode_classic(one, 0.25, 0.45), old_decode_batch(to_rows(one, 1), 0.25, 0.45))
    assert_same(decode_batch(to_rows(one, 1), 0.25, 0.45), old_decode_batch(to_rows(one, 1), 0.25, 0.45))


@pytest.mark.parametrize("scoring", ["objectness", "class"])
@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.3])
def test_the_car_stage_decodes_objectness_first_with_the_same_cars(car_model: Path, scoring: str, threshold: float) -> None:
    car = CarDetector(CarStageConfig(model=car_model, scoring=scoring, conf_threshold=threshold), provider="cpu")
    car.vehicle_ids = np.array([2, 3, 5, 7], np.int64)  # as the COCO model's names give them
    car.excluded_ids = np.array([0], np.int64)
    for seed in (0, 1):
        raw = classic_head(seed)
        assert_same(car.decode(raw), old_car_decode(car, raw))


def test_the_car_stage_end_to_end_is_unchanged(car_model: Path) -> None:
    car = CarDetector(CarStageConfig(model=car_model, min_side=0.0), provider="cpu")
    frames = [scene(i, [Mark(0, 4, (40 + 30 * i, 60, 30, 10))]) for i in range(3)]
    batch, boxes = car.detector.preprocess(frames)
    old = old_car_decode(car, car.detector.run(batch))
    for got, box, dets in zip(car.detect(frames), boxes, old):
        np.testing.assert_array_equal(got, box.to_frame(dets)[:, :5])
    assert sum(len(d) for d in old) >= 1, "the scene's blue car is found"


# ---- uint8 input ------------------------------------------------------------------------------------------

def test_model_variant_names_the_fp16_and_uint8_copies(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    assert model_variant(model, "fp32") == model_variant(model, "fp32", "float32") == model
    assert model_variant(model, "fp16").name == "m-fp16.onnx"
    assert model_variant(model, "fp32", "uint8").name == "m-u8.onnx"
    assert model_variant(model, "fp16", "uint8").name == "m-fp16-u8.onnx"
    assert model_variant(tmp_path / "m-fp16.onnx", "fp32", "uint8").name == "m-fp16-u8.onnx"
    assert model_variant(tmp_path / "m-u8.onnx", "fp16").name == "m-fp16-u8.onnx"
    assert model_variant(tmp_path / "m-fp16-u8.onnx", "fp32").name == "m-fp16-u8.onnx"
    with pytest.raises(ValueError, match="unknown input type"):
        model_variant(model, "fp32", "int8")


@pytest.mark.parametrize("kind", ["ultralytics", "classic"])
def test_the_uint8_copy_takes_bytes_and_detects_exactly_what_the_float_model_does(tmp_path: Path, kind: str) -> None:
    from export.uint8_input import INPUT_KEY, convert_uint8_input

    source = build_red_model(tmp_path / "red.onnx") if kind == "ultralytics" else build_car_model(tmp_path / "red.onnx")
    recipe = convert_uint8_input(source)
    assert recipe["out"] == str(tmp_path / "red-u8.onnx") and recipe["max_raw_diff"] == 0.0
    full, u8 = Detector(source, provider="cpu", workers=2), Detector(recipe["out"], provider="cpu", workers=2)
    assert u8.session.get_inputs()[0].type == "tensor(uint8)" and u8.input_dtype is np.uint8
    assert full.input_dtype is np.float32
    assert INPUT_KEY in u8.session.get_modelmeta().custom_metadata_map and "names" in u8.session.get_modelmeta().custom_metadata_map
    frames = [scene(i, [Mark(0, 4, (40 + 50 * i, 100 + 20 * i, 30, 10))], size) for i, size in
              enumerate([(320, 240), (640, 360), (100, 300), (128, 128)])]
    (floats, boxes_f), (bytes_, boxes_u) = full.preprocess(frames), u8.preprocess(frames)
    assert bytes_.dtype == np.uint8 and boxes_f == boxes_u
    np.testing.assert_array_equal(np.multiply(bytes_, np.float32(1 / 255), dtype=np.float32), floats)
    np.testing.assert_array_equal(u8.run(bytes_), full.run(floats))
    found = full.detect(frames)
    assert sum(len(d) for d in found) >= 1
    assert_same(u8.detect(frames), found)
    assert u8.warm_up([1, 3]) >= 0 and u8.head_layout() == full.head_layout()
    binding = DeviceBinding(u8.session, "cpu")  # the GPU's calls, on the CPU device: the buffer is uint8
    np.testing.assert_array_equal(binding.run(bytes_), u8.run(bytes_))


def test_the_uint8_copy_of_an_fp16_copy_and_refusals(tmp_path: Path) -> None:
    from export.fp16 import convert_fp16
    from export.uint8_input import Uint8InputError, convert_uint8_input

    source = build_red_model(tmp_path / "red.onnx")
    convert_fp16(source)
    recipe = convert_uint8_input(tmp_path / "red-fp16.onnx")  # its Cast comes last in the fp16 graph: sorted here
    assert recipe["out"] == str(tmp_path / "red-fp16-u8.onnx") and recipe["max_raw_diff"] == 0.0
    frames = [scene(i, [Mark(0, 4, (40 + 50 * i, 100, 30, 10))]) for i in range(3)]
    assert_same(Detector(recipe["out"], provider="cpu").detect(frames), Detector(tmp_path / "red-fp16.onnx", provider="cpu").detect(frames))
    with pytest.raises(Uint8InputError, match="already a uint8 copy"):
        convert_uint8_input(tmp_path / "red-u8.onnx" if (tmp_path / "red-u8.onnx").exists() else Path(recipe["out"]))
    with pytest.raises(Uint8InputError, match="not found"):
        convert_uint8_input(tmp_path / "nope.onnx")
    with pytest.raises(Uint8InputError, match="is not float32"):
        convert_uint8_input(Path(recipe["out"]), tmp_path / "again.onnx")


def test_input_type_uint8_runs_each_models_copy_and_a_missing_one_names_the_commands(tmp_path: Path) -> None:
    from export.fp16 import convert_fp16
    from export.uint8_input import convert_uint8_input
    from pipeline.car_gate import build_detector
    from pipeline.config import Settings
    from pipeline.preflight import BadInput, check_precision

    damage, cars = build_red_model(tmp_path / "damage.onnx"), build_car_model(tmp_path / "cars.onnx")
    settings = Settings(detector={"model": damage, "provider": "cpu", "input_type": "uint8", "cars": {"model": cars}})
    with pytest.raises(BadInput, match=r"damage-u8.onnx: not found — .*`scratchwatch u8 .*damage.onnx`"):
        check_precision(settings)
    fp16 = settings.model_copy(update={"detector": settings.detector.model_copy(update={"precision": "fp16"})})
    with pytest.raises(BadInput, match=r"`scratchwatch fp16 .*damage.onnx` then `scratchwatch u8 .*damage-fp16.onnx`"):
        check_precision(fp16)
    with pytest.raises(FileNotFoundError, match=r"scratchwatch u8 .*damage.onnx"):
        build_detector(settings.detector)
    convert_uint8_input(damage)
    convert_uint8_input(cars)
    check_precision(settings)
    detector = build_detector(settings.detector)
    assert detector.damage.name == "damage-u8.onnx" and detector.cars.name == "cars-u8.onnx"
    assert detector.damage.input_dtype is np.uint8
    convert_fp16(damage)
    convert_fp16(cars)
    for model in (damage, cars):
        convert_uint8_input(model_variant(model, "fp16"))
    check_precision(fp16)
    assert build_detector(fp16.detector).damage.name == "damage-fp16-u8.onnx"
    assert DetectorConfig().input_type == "float32", "float32 stays the default: no copy needed"


def test_the_u8_command_writes_the_copy_and_names_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["u8", str(tmp_path / "nope.onnx")]) == 1
    assert capsys.readouterr().err.strip() == f"scratchwatch u8: model {tmp_path / 'nope.onnx'}: not found"
    model = build_red_model(tmp_path / "red.onnx")
    assert main(["u8", str(model)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'red-u8.onnx'}" in out and "detector.input_type: uint8" in out


# ---- letterbox pool ------------------------------------------------------------------------------------------

def test_the_letterbox_pool_scales_with_the_cores_up_to_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preprocess_workers(None) == min(8, len(os.sched_getaffinity(0)))
    assert preprocess_workers(12) == 12
    for cores, expected in ((1, 1), (2, 2), (6, 6), (16, 8), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert preprocess_workers(None) == expected
