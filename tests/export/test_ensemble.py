"""`scratchwatch ensemble`: real ONNX graphs built here, combined, run by ONNX Runtime and the
pipeline's own Detector."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import ensemble
from export.ensemble import ENSEMBLE_KEY, EnsembleError, anchor_levels, build_ensemble, mirror_order
from export.onnx_export import read_metadata
from pipeline.cli import main
from pipeline.detector import Detector
from tests.pipeline.synthetic import RED_BGR, build_car_model, build_colour_model, build_red_model


def _raw(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _marked_frame() -> np.ndarray:
    """A grey frame with a red mark well left of centre: its mirror image lies elsewhere."""
    frame = np.full((128, 128, 3), 110, np.uint8)
    cv2.rectangle(frame, (16, 40), (39, 55), RED_BGR, -1)
    return frame


def test_anchor_levels_of_a_yolo_head_and_of_a_one_level_head() -> None:
    assert anchor_levels(4725, (480, 480), 32) == [(60, 60), (30, 30), (15, 15)]
    assert anchor_levels(256, (128, 128), 8) == [(16, 16)]
    assert anchor_levels(8 * 12 + 4 * 6 + 2 * 3, (64, 96), 32) == [(8, 12), (4, 6), (2, 3)]
    with pytest.raises(EnsembleError, match="255 anchors at 128x128 fit no grid of stride 8"):
        anchor_levels(255, (128, 128), 8)
    order = mirror_order([(2, 3), (1, 2)])
    assert order.tolist() == [2, 1, 0, 5, 4, 3, 7, 6]


def test_two_models_are_averaged_anchor_by_anchor(tmp_path: Path) -> None:
    red = build_red_model(tmp_path / "red.onnx")
    blue = build_colour_model(tmp_path / "blue.onnx", (-0.5, -0.5, 1.0), -0.2, "scratch")
    out = tmp_path / "models" / "both.onnx"

    recipe = build_ensemble([red, blue], out, threshold=0.35)

    batch = np.random.default_rng(1).random((3, 3, 128, 128), dtype=np.float32)
    np.testing.assert_allclose(_raw(out, batch), (_raw(red, batch) + _raw(blue, batch)) / 2, atol=1e-5)
    meta = read_metadata(out)
    assert meta["names"] == "{0: 'scratch'}" and meta["imgsz"] == "[128, 128]" and meta["scratchwatch_threshold"] == "0.35"
    assert recipe["views"] == 2 and not recipe["flip"] and recipe["max_raw_diff"] < 1e-5
    assert [m["model"] for m in recipe["members"]] == ["red.onnx", "blue.onnx"]
    assert '"views": 2' in meta[ENSEMBLE_KEY]
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 128]


def test_the_mirrored_view_agrees_with_the_plain_one_on_an_off_centre_mark(tmp_path: Path) -> None:
    red = build_red_model(tmp_path / "red.onnx")
    frame = _marked_frame()
    plain = Detector(red, conf_threshold=0.1).detect([frame])[0]

    flipped = build_ensemble([red], tmp_path / "red-flip.onnx", flip=True)
    both = Detector(tmp_path / "red-flip.onnx", conf_threshold=0.1).detect([frame, frame[:, ::-1].copy()])

    assert flipped["views"] == 2 and flipped["max_raw_diff"] < 1e-5
    assert len(plain) == 1 and len(both[0]) == 1
    np.testing.assert_allclose(both[0][0, :4], plain[0, :4], atol=1.0)  # the reflected box lies on the mark
    assert both[0][0, 4] == pytest.approx(plain[0, 4], abs=0.02)  # the mirrored anchors agree with the plain ones
    mirrored_box = [128 - plain[0, 2], plain[0, 1], 128 - plain[0, 0], plain[0, 3]]
    np.testing.assert_allclose(both[1][0, :4], mirrored_box, atol=1.0)  # a mirrored frame: the mirrored box


def test_a_mirror_without_the_anchor_reorder_is_caught_by_the_parity_check(tmp_path: Path, monkeypatch) -> None:
    """The control: what the two tests above would see if the graph put the mirrored anchors back wrongly."""
    red = build_red_model(tmp_path / "red.onnx")
    monkeypatch.setattr(ensemble, "mirror_order", lambda levels: np.arange(sum(r * c for r, c in levels), dtype=np.int64))
    recipe = build_ensemble([red], tmp_path / "wrong.onnx", flip=True)
    frame = _marked_frame()

    wrong = Detector(tmp_path / "wrong.onnx", conf_threshold=0.1).detect([frame])[0]
    plain = Detector(red, conf_threshold=0.1).detect([frame])[0]

    assert recipe["max_raw_diff"] > 0.1
    assert len(wrong) == 0 or wrong[:, 4].max() < 0.7 * plain[0, 4]


def test_the_uint8_copy_of_an_ensemble_detects_what_the_ensemble_does(tmp_path: Path) -> None:
    from export.uint8_input import convert_uint8_input

    red = build_red_model(tmp_path / "red.onnx")
    build_ensemble([red], tmp_path / "red-flip.onnx", flip=True)
    convert_uint8_input(tmp_path / "red-flip.onnx")
    frame = _marked_frame()

    float_rows = Detector(tmp_path / "red-flip.onnx", conf_threshold=0.1).detect([frame])[0]
    byte_rows = Detector(tmp_path / "red-flip-u8.onnx", conf_threshold=0.1).detect([frame])[0]

    np.testing.assert_allclose(byte_rows, float_rows, atol=1e-4)


def test_members_that_cannot_be_combined_are_named(tmp_path: Path) -> None:
    red = build_red_model(tmp_path / "red.onnx")
    with pytest.raises(EnsembleError, match="needs two models, or one with --flip"):
        build_ensemble([red], tmp_path / "one.onnx")
    with pytest.raises(EnsembleError, match=r"car\.onnx: output \[1, 256, 6\] with names \{0: 'car'\}"):
        build_ensemble([red, build_car_model(tmp_path / "car.onnx")], tmp_path / "x.onnx")
    small = build_red_model(tmp_path / "small.onnx", imgsz=64, dynamic=False)
    with pytest.raises(EnsembleError, match=r"small\.onnx: fixed input \[64, 64\] differs from the first model's \[128, 128\]"):
        build_ensemble([red, small], tmp_path / "x.onnx")
    coarse = build_red_model(tmp_path / "coarse.onnx", cell=16)
    with pytest.raises(EnsembleError, match=r"outputs differ at 128x128: red\.onnx \[1, 5, 256\], coarse\.onnx \[1, 5, 64\]"):
        build_ensemble([red, coarse], tmp_path / "x.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EnsembleError, match=r"junk\.onnx: not an ONNX model"):
        build_ensemble([red, tmp_path / "junk.onnx"], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_the_ensemble_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    red = build_red_model(tmp_path / "red.onnx")
    out = tmp_path / "red-flip.onnx"

    assert main(["ensemble", str(out), str(red), "--flip", "--threshold", "0.4"]) == 0
    assert "wrote" in capsys.readouterr().out and Detector(out, conf_threshold=None).conf_threshold == 0.4

    assert main(["ensemble", str(out), str(red), str(tmp_path / "missing.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"scratchwatch ensemble: model {tmp_path / 'missing.onnx'}: not found"]


def test_the_ensemble_command_scores_and_embeds_with_data(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    red = build_red_model(tmp_path / "red.onnx")
    out = tmp_path / "red-flip.onnx"

    assert main(["ensemble", str(out), str(red), "--flip", "--threshold", "0.3", "--data", str(dataset)]) == 0

    meta = read_metadata(out)
    metrics = json.loads(meta["scratchwatch_metrics"])
    assert metrics["split"] == "test" and metrics["images"] == 3 and metrics["mAP50"] > 0.9  # the red marks are found
    assert metrics["shipped"]["threshold"] == 0.3 and meta["scratchwatch_threshold"] == "0.3"
    assert meta["scratchwatch_data_hash"] and ENSEMBLE_KEY in meta
    assert f"at threshold 0.3: P {metrics['shipped']['precision']:.3f}" in capsys.readouterr().out
