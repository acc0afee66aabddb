"""The soak benchmark, short (30 s, two live loopback cameras, the synthetic model): nothing that
should stay flat grows, and every incident the stage opened is stored once."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.pipeline.synthetic import Mark, write_clip

REPO = Path(__file__).resolve().parents[2]
SOAK_S = 30.0


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", REPO / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install ffmpeg; `make system-deps` does)")
def test_a_short_soak_holds(tmp_path: Path, red_model: Path) -> None:
    clip = write_clip(tmp_path / "lot.mp4", 50, [Mark(0, 8, (60, 60, 20, 20))], size=(160, 120))  # a mark every 5 s of loop
    report = _soak_module().soak(clip, cameras=2, seconds=SOAK_S, fps=5, model=red_model, cars=None)
    assert report["ok"], json.dumps(report)
    assert report["incidents_opened"] >= 2 and report["analysed_fps_per_camera"] > 3
