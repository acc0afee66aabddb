"""`scratchwatch detect` end to end: the CLI, real ONNX models (car stage and damage), real image files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import yaml

from pipeline.cli import main
from tests.pipeline.synthetic import RED_BGR, Mark, build_car_model, build_red_model, scene

MARK = Mark(0, 1, (200, 100, 30, 10))  # on the scene's blue car


@pytest.fixture
def config(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    raw = {"detector": {"model": str(build_red_model(models / "red.onnx")), "provider": "cpu",
                        "cars": {"model": str(build_car_model(models / "car.onnx"))}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _photos(folder: Path) -> dict[str, Path]:
    (folder / "sub").mkdir(parents=True)
    big = cv2.resize(scene(0, [MARK]), (640, 480), interpolation=cv2.INTER_NEAREST)  # boxes must come back x2
    close_up = cv2.resize(scene(0, []), (320, 240))
    close_up[:] = (90, 95, 100)  # no car in view: the photo gate looks at it whole
    cv2.rectangle(close_up, (100, 100), (139, 109), RED_BGR, -1)
    paths = {"car": folder / "car.png", "close_up": folder / "sub" / "door.webp", "broken": folder / "broken.jpg"}
    cv2.imwrite(str(paths["car"]), big)
    cv2.imwrite(str(paths["close_up"]), close_up, [cv2.IMWRITE_WEBP_QUALITY, 100])
    paths["broken"].write_bytes(b"not a jpeg at all")
    return paths


def test_detect_json_lists_cars_and_damage_in_original_pixels_and_flags_a_broken_image(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _photos(tmp_path / "photos")
    assert main(["--config", str(config), "detect", str(tmp_path / "photos"), "--json", "--out", str(tmp_path / "out")]) == 1
    results = {Path(r["image"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert set(results) == {"car.png", "door.webp", "broken.jpg"}  # recursive, every image listed
    assert results["broken.jpg"] == {"image": str(paths["broken"]), "error": "does not decode as an image"}
    car = results["car.png"]
    assert (car["width"], car["height"]) == (640, 480) and len(car["cars"]) == 1
    [det] = car["detections"]
    x, y, w, h = (2 * v for v in MARK.box)
    assert all(abs(a - b) < 8 for a, b in zip(det["box"], (x, y, x + w, y + h))), det
    assert det["label"] == "scratch" and det["car"] == car["cars"][0]["box"] and det["score"] >= 0.25
    door = results["door.webp"]
    assert door["cars"] == [] and len(door["detections"]) == 1 and door["detections"][0]["car"] is None
    assert (tmp_path / "out" / "car.detect.jpg").exists() and not (tmp_path / "out" / "broken.detect.jpg").exists()


def test_detect_without_the_car_gate_and_with_a_threshold(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _photos(tmp_path / "photos")
    assert main(["--config", str(config), "detect", str(paths["car"]), "--json", "--no-car-gate"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["cars"] == [] and result["detections"][0]["car"] is None
    clean = tmp_path / "clean.png"
    cv2.imwrite(str(clean), scene(0, []))
    assert main(["--config", str(config), "detect", str(clean), "--json", "--no-car-gate"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["detections"] == []
    assert main(["--config", str(config), "detect", str(clean), "--json", "--no-car-gate", "--conf", "0.1"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["detections"]) == 1  # red-less cells score 0.12: now above threshold
    assert main(["--config", str(config), "detect", str(paths["car"])]) == 0
    assert "car.png (640x480): 1 car(s); scratch" in capsys.readouterr().out


def test_detect_refuses_an_empty_directory_and_a_missing_path_in_one_line(config: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["--config", str(config), "detect", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.strip() == f"scratchwatch: directory {tmp_path / 'empty'} holds no images (.jpg, .jpeg, .png, .webp, .bmp)"
    assert main(["--config", str(config), "detect", str(tmp_path / "nope.jpg")]) == 1
    assert capsys.readouterr().err.strip() == f"scratchwatch: {tmp_path / 'nope.jpg'} does not exist"
