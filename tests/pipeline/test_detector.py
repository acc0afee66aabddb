"""Detector: both head layouts, batching, letterbox and its inverse, metadata, NMS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.detector import Detector, decode_batch, letterbox_into, nms_keep, to_rows
from tests.pipeline.synthetic import Mark, scene

MARK = Mark(0, 1, (200, 100, 30, 10))


def _frame(size: tuple[int, int] = (320, 240), marks: list[Mark] | None = None) -> np.ndarray:
    return scene(0, [MARK] if marks is None else marks, size)


def _assert_near_mark(row: np.ndarray, box: tuple[int, int, int, int], scale: float = 1.0, tol: float = 6.0) -> None:
    x, y, w, h = (v * scale for v in box)
    np.testing.assert_allclose(row[:4], [x, y, x + w, y + h], atol=tol * scale)


@pytest.mark.parametrize("fixture", ["red_model", "red_model_classic"])
def test_both_layouts_find_the_mark_in_frame_pixels(fixture: str, request: pytest.FixtureRequest) -> None:
    detector = Detector(request.getfixturevalue(fixture), provider="cpu")
    assert detector.imgsz == (128, 128) and detector.names == {0: "scratch"}
    assert detector.providers == ["CPUExecutionProvider"]
    [dets] = detector.detect([_frame()])
    assert dets.shape == (1, 6) and dets.dtype == np.float32
    _assert_near_mark(dets[0], MARK.box)
    assert dets[0, 4] > 0.9 and dets[0, 5] == 0


def test_batch_of_different_sizes_maps_each_back(red_model: Path, red_model_classic: Path) -> None:
    """A 640x360 frame (letterboxed with vertical padding) and a frame without any mark."""
    wide = _frame((640, 360), [Mark(0, 1, (400, 200, 60, 20))])
    frames = [_frame(), wide, _frame(marks=[])]
    for model in (red_model, red_model_classic):
        detector = Detector(model, provider="cpu")
        assert detector.batch_dynamic == (model == red_model)
        first, second, empty = detector.detect(frames)
        _assert_near_mark(first[0], MARK.box)
        _assert_near_mark(second[0], (400, 200, 60, 20), tol=8)
        assert empty.shape == (0, 6)


def test_letterbox_inverse_maps_network_boxes_to_frame_pixels() -> None:
    frame = np.zeros((360, 640, 3), np.uint8)
    out = np.empty((3, 320, 320), np.float32)
    box = letterbox_into(frame, out)
    assert box.scale == pytest.approx(0.5) and (box.left, box.top) == (0, 70)
    assert out[:, 0, 0] == pytest.approx([114 / 255] * 3)  # padding grey
    assert out[:, 70, 0] == pytest.approx([0, 0, 0])
    network = np.array([[10, 80, 110, 180, 0.9, 0], [-5, 60, 400, 400, 0.5, 0]], np.float32)
    mapped = box.to_frame(network)
    np.testing.assert_allclose(mapped[0, :4], [20, 20, 220, 220])
    np.testing.assert_allclose(mapped[1, :4], [0, 0, 640, 360])  # clipped to the frame
    np.testing.assert_allclose(mapped[:, 4:], network[:, 4:])


def test_letterbox_converts_bgr_to_rgb() -> None:
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    out = np.empty((3, 8, 8), np.float32)
    letterbox_into(frame, out)
    assert out[0].min() == 1.0 and out[1:].max() == 0.0


def test_layouts_decode_to_the_same_rows() -> None:
    """One box in each layout, with two classes: ultralytics [1, 6, N] vs classic [1, N, 7]."""
    n = 10
    ultra = np.zeros((1, 6, n), np.float32)
    ultra[0, :, 3] = [50, 60, 20, 10, 0.1, 0.8]
    classic = np.zeros((1, n, 7), np.float32)
    classic[0, 3] = [50, 60, 20, 10, 0.8, 0.125, 1.0]
    for raw in (ultra, classic):
        rows = to_rows(raw, num_classes=2)
        assert rows.shape == (1, n, 6)
        [dets] = decode_batch(rows, 0.25, 0.45)
        np.testing.assert_allclose(dets, [[40, 55, 60, 65, 0.8, 1]], rtol=1e-6)


def test_nms_is_per_class_and_keeps_the_best() -> None:
    dets = np.array(
        [[0, 0, 10, 10, 0.9, 0], [1, 1, 11, 11, 0.8, 0], [1, 1, 11, 11, 0.7, 1], [50, 50, 60, 60, 0.6, 0]], np.float32
    )
    kept = dets[nms_keep(dets, 0.45)]
    assert kept[:, 4].tolist() == pytest.approx([0.9, 0.7, 0.6])


def test_conf_threshold_none_reads_the_models_threshold(tmp_path: Path, red_model: Path) -> None:
    import onnx

    model = onnx.load(str(red_model))
    model.metadata_props.add(key="scratchwatch_threshold", value="0.6")
    path = tmp_path / "with-threshold.onnx"
    onnx.save(model, str(path))
    assert Detector(path, provider="cpu", conf_threshold=None).conf_threshold == 0.6
    assert Detector(red_model, provider="cpu", conf_threshold=None).conf_threshold == 0.25
    assert Detector(path, provider="cpu", conf_threshold=0.4).conf_threshold == 0.4


def test_model_without_metadata_falls_back_to_input_shape(tmp_path: Path, red_model_classic: Path) -> None:
    import onnx

    model = onnx.load(str(red_model_classic))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    detector = Detector(path, provider="cpu")
    assert detector.imgsz == (128, 128) and detector.names == {0: "scratch"}
    [dets] = detector.detect([_frame()])
    _assert_near_mark(dets[0], MARK.box)


def test_missing_model_and_cuda_demand_are_clear_errors(tmp_path: Path, red_model: Path) -> None:
    with pytest.raises(FileNotFoundError, match="detector model .*nope.onnx not found"):
        Detector(tmp_path / "nope.onnx")
    import onnxruntime as ort

    probe = Detector(red_model, provider="auto")
    if "CUDAExecutionProvider" in probe.providers:
        pytest.skip("this host really has CUDA")
    assert "CUDAExecutionProvider" not in ort.InferenceSession(str(red_model), providers=["CPUExecutionProvider"]).get_providers()
    with pytest.raises(RuntimeError, match="provider 'cuda' requested but the session got"):
        Detector(red_model, provider="cuda")
