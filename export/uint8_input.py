"""A copy of a model that takes the letterboxed bytes: ``scratchwatch u8 MODEL`` writes ``MODEL-u8.onnx``.

The copy's input ``images_u8`` is uint8 (B, 3, H, W) RGB 0-255; two nodes in front of the original
graph, ``Cast(to=float)`` and ``Mul(1/255)``, make the float32 input the original graph had, so
on a GPU the batch crosses to the device as bytes (4x fewer than float32) and is normalised there,
and the CPU's letterbox skips its float conversion. The arithmetic is the letterbox's own
(float32(byte) x float32(1/255)), so the copy's outputs equal the source's on the same frames.
``detector.input_type: uint8`` makes the pipeline run the copy of each model
(``pipeline.detector.model_variant``); it works on an fp16 copy too (``MODEL-fp16-u8.onnx``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from export.onnx_export import load_for_variant, save_variant
from pipeline.detector import model_variant

log = logging.getLogger(__name__)

INPUT_KEY = "scratchwatch_input"
"""Metadata key: what the copy's input takes and what it was made from."""
U8_INPUT = "images_u8"


class Uint8InputError(ValueError):
    """The model cannot be given a uint8 input (missing, not ONNX, already uint8): one line naming it."""


def with_uint8_input(proto, input_name: str = U8_INPUT):  # onnx.ModelProto -> onnx.ModelProto
    """The model with a uint8 input of the same shape feeding Cast -> Mul(1/255) -> its float32 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise Uint8InputError(f"expected one image input, found {[i.name for i in inputs]}")
    source = inputs[0]
    if source.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise Uint8InputError(f"input {source.name!r} is not float32 (already a uint8 copy?)")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    new_input = onnx.ValueInfoProto()
    new_input.CopyFrom(source)
    new_input.name = input_name
    new_input.type.tensor_type.elem_type = TensorProto.UINT8
    position = [i.name for i in graph.input].index(source.name)
    del graph.input[position]
    graph.input.insert(position, new_input)
    scale = numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), f"{input_name}_scale")
    graph.initializer.append(scale)
    cast = helper.make_node("Cast", [input_name], [f"{input_name}_float"], name=f"{input_name}_cast", to=TensorProto.FLOAT)
    mul = helper.make_node("Mul", [f"{input_name}_float", scale.name], [source.name], name=f"{input_name}_normalise")
    nodes = _topological([cast, mul, *graph.node], {i.name for i in graph.input} | initializers | {scale.name})
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def _topological(nodes: list, available: set[str]) -> list:
    """The nodes in an order where each comes after what it reads (ONNX Runtime's fp16 converter
    appends its input Cast at the end, which the checker refuses)."""
    ordered, pending, available = [], list(nodes), set(available) | {""}
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise Uint8InputError(f"graph has a cycle or a missing input near node {pending[0].name!r}")
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    return ordered


def convert_uint8_input(model: Path, out: Path | None = None) -> dict:
    """Write the uint8-input copy of ``model`` (default: ``MODEL-u8.onnx`` next to it); returns the
    recipe, also stored in the copy's metadata, with its raw-output parity on the CPU."""
    out = out or model_variant(model, "fp32", "uint8")
    proto = load_for_variant(model, out, Uint8InputError, "already a uint8 copy (its name ends in -u8); give the float source")
    try:
        u8 = with_uint8_input(proto)
    except Uint8InputError as exc:
        raise Uint8InputError(f"model {model}: {exc}") from None
    source_sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    recipe = save_variant(u8, out, INPUT_KEY, lambda saved: {
        "source_model": model.name, "source_sha256": source_sha256,
        "input": f"{U8_INPUT}: uint8 RGB 0-255, Cast(float) x float32(1/255) in the graph",
        **raw_parity(model, saved),
    })
    log.info("wrote %s (uint8-input copy of %s): max raw output diff %.3g on the CPU", out, model, recipe["max_raw_diff"])
    return {"out": str(out), **recipe}


def raw_parity(source_path: Path, u8_path: Path, seed: int = 0) -> dict[str, float]:
    """Raw outputs of both files on the CPU, on one generated image: the float file fed bytes / 255 as
    the letterbox writes them, the copy fed the bytes."""
    from pipeline.detector import Detector

    source, u8 = Detector(source_path, provider="cpu"), Detector(u8_path, provider="cpu")
    height, width = source.imgsz
    image = np.random.default_rng(seed).integers(0, 256, (1, 3, height, width), dtype=np.uint8)
    floats = np.multiply(image, np.float32(1 / 255), dtype=np.float32)
    diff = np.abs(source.run(floats) - u8.run(image))
    return {"max_raw_diff": float(diff.max()) if diff.size else 0.0}
