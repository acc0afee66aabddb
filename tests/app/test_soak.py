"""The soak benchmark, short (60 s, two live loopback cameras, the synthetic model): nothing that
should stay flat grows, every incident the stage opened is stored once, and against a plain replay
of the same clip no incident is lost or duplicated in any loop the cameras streamed whole."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK_S = 60.0


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", REPO / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (apt-get install ffmpeg; `make system-deps` does)")
def test_a_short_soak_holds(tmp_path: Path) -> None:
    soak = _soak_module()
    clip, model, cars = soak.synthetic_inputs(tmp_path)  # a mark every 5 s of loop
    report = soak.soak(clip, cameras=2, seconds=SOAK_S, fps=5, model=model, cars=cars)
    assert report["ok"], json.dumps(report)
    assert report["incidents_opened"] >= 2 and report["analysed_fps_per_camera"] > 3
    reference = report["reference"]
    assert reference["reference_per_loop"] == 1 and reference["loops"] >= 10, "two cameras, 5 s loops, most of 60 s compared"
    assert reference["lost"] == reference["duplicated"] == reference["unexpected"] == []


def test_the_comparison_finds_lost_duplicated_and_unexpected_incidents() -> None:
    compare = _soak_module().compare_with_reference
    reference = {"duration_s": 10.0, "starts_s": [1.0, 6.0]}
    base = 1000.0  # the stream started then: loops at 1000, 1010, 1020...
    good = [base + k * 10 + s + 0.2 for k in range(3) for s in (1.0, 6.0)]
    result = compare({"cam": good}, reference, {"cam": (base - 0.5, base + 30.5)}, fps=5)
    assert result["loops"] == 3 and result["lost"] == result["duplicated"] == result["unexpected"] == []
    damaged = [t for t in good if t != base + 16.2] + [base + 21.3, base + 24.0]  # loop 1 loses one, loop 2 doubles one, one stray
    result = compare({"cam": damaged}, reference, {"cam": (base - 0.5, base + 30.5)}, fps=5)
    assert [(x["loop"], x["at_s"]) for x in result["lost"]] == [(1, 6.0)]
    assert [(x["loop"], x["at_s"], x["count"]) for x in result["duplicated"]] == [(2, 1.0, 2)]
    assert [x["at"] for x in result["unexpected"]] == [23.8], "in loop time, aligned on the matches (0.2 s late)"
