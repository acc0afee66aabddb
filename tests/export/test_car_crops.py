"""`dataset crops` and `dataset compact`: the gate's own windows become training photos, labels cut exactly."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.boxes import xyxy_to_xywhn
from export.car_crops import add_car_crops, compact_copy
from export.dataset import DatasetError, load_split, write_label
from pipeline.car_gate import CarGatedDetector
from pipeline.cars import CarDetector
from pipeline.config import CarStageConfig
from pipeline.detector import Detector
from tests.pipeline.synthetic import build_car_model, build_red_model, scene

MARK = (200, 100, 30, 10)  # on the synthetic car (x 40-288, y 45-170)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> CarGatedDetector:
    models = tmp_path_factory.mktemp("models")
    damage = Detector(build_red_model(models / "red.onnx"), provider="cpu")
    cars = CarDetector(CarStageConfig(model=build_car_model(models / "car.onnx")), provider="cpu")
    return CarGatedDetector(damage, cars, "photo", photo_whole_share=0.3)


def _photo(root: Path, split: str, name: str, size: tuple[int, int], boxes_xyxy: list) -> None:
    for kind in ("images", "labels"):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
    image = scene(0, [], size=size)
    cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), image)
    write_label(root / "labels" / split / f"{name}.txt", xyxy_to_xywhn(np.array(boxes_xyxy, float).reshape(-1, 4), *size))


def _dataset(root: Path) -> Path:
    x, y, w, h = MARK
    _photo(root, "train", "wide", (960, 540), [[x, y, x + w, y + h], [900, 500, 950, 530]])  # second box: off the car
    _photo(root, "train", "close", (320, 240), [[x, y, x + w, y + h]])  # the car fills the photo: looked at whole
    _photo(root, "val", "v", (960, 540), [[x, y, x + w, y + h]])
    return root


def test_crops_are_the_gates_windows_with_labels_cut_exactly(gated: CarGatedDetector, tmp_path: Path) -> None:
    src = _dataset(tmp_path / "src")
    before = sorted(p.name for p in src.rglob("*"))
    counts = add_car_crops(src, tmp_path / "out", gated, progress=False)
    assert sorted(p.name for p in src.rglob("*")) == before  # the source is untouched
    assert counts == {"photos": 2, "photos_cropped": 1, "crops": 1, "crop_boxes": 1, "boxes_dropped": 0}
    [window] = gated.windows(cv2.imread(str(src / "images/train/wide.jpg")))
    crop = cv2.imread(str(tmp_path / "out/images/train/wide__car0.jpg"))
    assert crop.shape[:2] == (window[3] - window[1], window[2] - window[0])
    train = dict((p.stem, boxes) for p, boxes in load_split(tmp_path / "out", "train"))
    assert set(train) == {"wide", "close", "wide__car0"}
    x, y, w, h = MARK
    expected = xyxy_to_xywhn(np.array([[x - window[0], y - window[1], x + w - window[0], y + h - window[1]]]),
                             window[2] - window[0], window[3] - window[1])
    np.testing.assert_allclose(train["wide__car0"], expected, atol=1e-5)  # the off-car box is outside the crop
    assert [p.stem for p, _ in load_split(tmp_path / "out", "val")] == ["v"]  # other splits unchanged
    assert json.loads((tmp_path / "out/crops.json").read_text())["crops"] == 1
    with pytest.raises(DatasetError, match="new dataset folder"):
        add_car_crops(src, src, gated, progress=False)


def test_compact_copy_bounds_the_size_and_keeps_the_labels(tmp_path: Path) -> None:
    src = _dataset(tmp_path / "src")
    written = compact_copy(src, tmp_path / "small", max_side=480, quality=70, progress=False)
    assert written["images"] == 3 and written["bytes"] > 0
    for split in ("train", "val"):
        for (orig, boxes), (small, small_boxes) in zip(load_split(src, split), load_split(tmp_path / "small", split)):
            assert small.suffix == ".webp" and small.stem == orig.stem
            assert max(cv2.imread(str(small)).shape[:2]) <= 480
            np.testing.assert_array_equal(boxes, small_boxes)
    assert "train: images/train" in (tmp_path / "small/data.yaml").read_text()
