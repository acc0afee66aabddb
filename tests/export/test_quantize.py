"""`scratchwatch quantize`: a real static int8 quantization of a model built here, calibrated on a
generated dataset's val split, loaded by the pipeline's own Detector."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from export.onnx_export import read_metadata, set_metadata
from export.quantize import QUANT_KEY, decode_tail, head_module, quant_recipe, quantize_model
from pipeline.cli import main
from pipeline.detector import Detector
from tests.export.conftest import marked_photo
from tests.pipeline.synthetic import RED_BGR, build_red_model

def test_quantized_model_keeps_metadata_and_finds_what_fp32_finds(tmp_path: Path, dataset: Path) -> None:
    fp32 = build_red_model(tmp_path / "red.onnx", imgsz=128)
    set_metadata(fp32, {"scratchwatch_threshold": "0.4", "scratchwatch_metrics": {"mAP50": 0.5}})
    out = tmp_path / "models" / "red-int8.onnx"

    recipe = quantize_model(fp32, dataset, out, limit=4)

    meta = read_metadata(out)
    assert meta["names"] == "{0: 'scratch'}" and meta["imgsz"] == "[128, 128]"
    assert meta["scratchwatch_threshold"] == "0.4" and meta["scratchwatch_metrics"] == '{"mAP50": 0.5}'
    assert quant_recipe(out) == recipe and quant_recipe(fp32) is None
    assert recipe["calibration_images"] == 4 and recipe["format"] == "qdq" and not recipe["per_channel"] and recipe["calibration"] == "average"
    assert recipe["calibration_data"].endswith("[val]") and recipe["source_sha256"] == Detector(fp32).model_sha256
    graph = onnx.load(str(out)).graph
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert next(n for n in graph.node if "output0" in n.output).op_type != "DequantizeLinear"  # the head decodes in float

    int8_det, fp32_det = Detector(out, "cpu", conf_threshold=None), Detector(fp32, "cpu", conf_threshold=None)
    assert int8_det.conf_threshold == 0.4 and int8_det.imgsz == (128, 128)
    frames = [marked_photo(seed)[0] for seed in (40, 41)]
    for a, b in zip(fp32_det.detect(frames), int8_det.detect(frames)):
        assert len(a) == len(b) == 1
        assert np.abs(a[0, :4] - b[0, :4]).max() < 3.0 and abs(a[0, 4] - b[0, 4]) < 0.05


def test_decode_tail_is_what_no_learned_conv_needs(tmp_path: Path) -> None:
    model = onnx.load(str(build_red_model(tmp_path / "red.onnx", imgsz=64)))
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    tail = set(decode_tail(model))
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    assert conv not in tail and len(tail) == len(model.graph.node) - 1


def test_the_head_module_is_found_in_an_export_and_in_each_member_of_an_ensemble(tmp_path: Path) -> None:
    model = onnx.load(str(build_red_model(tmp_path / "red.onnx", imgsz=64)))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    for prefix in ("", "m0_", "m1_"):
        names = [f"{prefix}/model.1/conv/Conv", f"{prefix}/model.24/cv3.0/Conv", f"{prefix}/model.24/dfl/Softmax"]
        for name in names:
            model.graph.node.append(onnx.helper.make_node("Identity", [conv.output[0]], [f"{name}_out"], name=name))
    tail = [n.name for n in model.graph.node if "/model.24/dfl/" in n.name]
    head = head_module(model, tail)
    assert sorted(head) == sorted(n.name for n in model.graph.node if "/model.24/" in n.name) and len(head) == 6
    assert head_module(model, tail + ["m0_/model.9/x/Add"]) == [], "two modules in the tail: ambiguous, nothing assumed"


def test_quantize_command_writes_next_to_the_model_and_names_bad_input(tmp_path: Path, dataset: Path, capsys) -> None:
    fp32 = build_red_model(tmp_path / "red.onnx", imgsz=64)
    assert main(["quantize", str(fp32), "--data", str(dataset), "--limit", "2", "--per-channel", "--int8-head"]) == 0
    recipe = quant_recipe(tmp_path / "red-int8.onnx")
    assert "red-int8.onnx" in capsys.readouterr().out and recipe["per_channel"] and recipe["float_head"] is False

    assert main(["quantize", str(fp32), "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "val" in err[0]
