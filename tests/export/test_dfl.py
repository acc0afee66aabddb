"""`scratchwatch fast-dfl`: the exported DFL decode rewritten, outputs unchanged, on real ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.dfl import DFL_KEY, FastDflError, fast_dfl
from export.onnx_export import read_metadata
from pipeline.cli import main

ANCHORS = 6


def dfl_model(path: Path, *, then: str = "Reshape") -> Path:
    """The decode as ultralytics exports it: [B, 64, A] -> Reshape [B, 4, 16, A] -> Transpose -> Softmax(1)
    -> 1x1 Conv with weights 0..15 -> ``then`` (a Reshape to [B, 4, A], or an Add that needs the conv's layout)."""
    nodes = [
        helper.make_node("Reshape", ["x", "split"], ["sides"]),
        helper.make_node("Transpose", ["sides"], ["bins_first"], perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["bins_first"], ["weights"], axis=1),
        helper.make_node("Conv", ["weights", "bins"], ["expected"], kernel_shape=[1, 1]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, 4, 16, ANCHORS], np.int64), "split"),
        numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "bins"),
    ]
    if then == "Reshape":
        nodes.append(helper.make_node("Reshape", ["expected", "flat"], ["y"]))
        inits.append(numpy_helper.from_array(np.array([0, 4, ANCHORS], np.int64), "flat"))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, ANCHORS])
    else:
        nodes.append(helper.make_node("Add", ["expected", "expected"], ["y"]))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 4, ANCHORS])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64, ANCHORS])
    model = helper.make_model(helper.make_graph(nodes, "dfl", [x], [out], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_rewritten_decode_gives_the_same_boxes_with_a_last_axis_softmax(tmp_path: Path) -> None:
    source = dfl_model(tmp_path / "head.onnx")
    x = np.random.default_rng(1).normal(0, 3, (3, 64, ANCHORS)).astype(np.float32)

    recipe = fast_dfl(source, tmp_path / "fast.onnx")

    fast = tmp_path / "fast.onnx"
    np.testing.assert_allclose(run(fast, x), run(source, x), atol=1e-5)
    assert run(source, x).shape == (3, 4, ANCHORS) and recipe["rewritten"] == 1 and recipe["max_raw_diff"] <= 1e-5
    graph = onnx.load(str(fast)).graph
    ops = [n.op_type for n in graph.node]
    assert "Conv" not in ops and "MatMul" in ops and "bins" not in {i.name for i in graph.initializer}
    [softmax] = [n for n in graph.node if n.op_type == "Softmax"]
    assert helper.get_attribute_value(softmax.attribute[0]) == -1
    stored = json.loads(read_metadata(fast)[DFL_KEY])
    assert stored["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest() and stored["rewritten"] == 1


def test_in_place_by_default_and_a_second_run_finds_nothing_to_rewrite(tmp_path: Path, capsys) -> None:
    model = dfl_model(tmp_path / "head.onnx")
    before = model.read_bytes()

    assert main(["fast-dfl", str(model)]) == 0
    assert model.read_bytes() != before and "1 DFL decode(s)" in capsys.readouterr().out

    after = model.read_bytes()
    assert main(["fast-dfl", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"model {model}: no exported DFL decode" in err
    assert model.read_bytes() == after


def test_a_decode_whose_output_layout_matters_downstream_is_left_alone(tmp_path: Path) -> None:
    with pytest.raises(FastDflError, match="no exported DFL decode"):
        fast_dfl(dfl_model(tmp_path / "head.onnx", then="Add"), tmp_path / "fast.onnx")
    assert not (tmp_path / "fast.onnx").exists()


def test_a_rewrite_that_changed_the_output_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    model = dfl_model(tmp_path / "head.onnx")
    before = model.read_bytes()
    monkeypatch.setattr("export.dfl.raw_difference", lambda source, rewritten: 0.5)

    with pytest.raises(FastDflError, match="changed the raw output by 0.5"):
        fast_dfl(model)
    assert model.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["head.onnx"]


@pytest.mark.parametrize("content", [None, b"not a model"])
def test_a_missing_or_broken_file_is_one_line_naming_it(tmp_path: Path, capsys, content) -> None:
    model = tmp_path / "head.onnx"
    if content is not None:
        model.write_bytes(content)

    assert main(["fast-dfl", str(model)]) == 1

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"scratchwatch fast-dfl: model {model}: ")
    assert ("not found" if content is None else "not an ONNX model") in err
