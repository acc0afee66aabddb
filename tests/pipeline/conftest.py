"""Pipeline fixtures: the synthetic red-mark ONNX models, generated clips, test settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import Settings, load_settings
from tests.pipeline.synthetic import Mark, build_car_model, build_red_model, write_clip

REPO = Path(__file__).resolve().parents[2]

# A 6 s clip at 10 fps: two scratches, apart in time and place.
CLIP_FRAMES = 60
CLIP_MARKS = [Mark(10, 25, (200, 100, 30, 10)), Mark(40, 55, (60, 150, 20, 20))]


@pytest.fixture(scope="session")
def red_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ultralytics layout [B, 5, N], dynamic batch axis, ultralytics metadata."""
    return build_red_model(tmp_path_factory.mktemp("models") / "red-ultralytics.onnx")


@pytest.fixture(scope="session")
def car_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The car stage's stand-in: finds the synthetic scene's blue car (classic head, objectness)."""
    return build_car_model(tmp_path_factory.mktemp("models") / "blue-car.onnx")


@pytest.fixture(scope="session")
def red_model_classic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """classic YOLOv5 layout [B, N, 6] with a fixed batch of 1 (the detector loops)."""
    return build_red_model(tmp_path_factory.mktemp("models") / "red-classic.onnx", layout="classic", dynamic=False)


@pytest.fixture(scope="session")
def two_mark_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clips") / "lot.mp4", CLIP_FRAMES, CLIP_MARKS)


@pytest.fixture
def make_settings(tmp_path: Path, red_model: Path, car_model: Path) -> Callable[..., Settings]:
    """Settings loaded from a real YAML file in tmp_path, with per-test overrides."""

    def make(**sections: Any) -> Settings:
        raw: dict[str, Any] = {
            "data_dir": "data",
            "detector": {"model": str(red_model), "provider": "cpu", "threads": 1,
                         "car_gate": "strict", "cars": {"model": str(car_model), "inspect_every_s": 0}},
            "tracker": {"min_hits": 3, "max_missed": 5},
        }
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_settings(path)

    return make
