"""The head's box decode rewritten so ONNX Runtime runs it fast: ``scratchwatch fast-dfl MODEL``.

ultralytics exports the distribution-focal-loss (DFL) decode of a YOLOv5u/v8 head as

    Reshape [B, 4, 16, A] -> Transpose [B, 16, 4, A] -> Softmax(axis=1) -> Conv 1x1 (weights 0..15) -> [B, 1, 4, A]

A softmax over a non-last axis makes ONNX Runtime move the tensor so that axis is last and back,
and the 1x1 conv then reads it with a stride of 4 * A: on 2 CPU cores this tail alone took about
10 % of the damage model (v2: 2.6 of 26.5 ms per frame). The same arithmetic written as

    Reshape [B, 4, 16, A] -> Transpose [B, 4, A, 16] -> Softmax(axis=-1) -> MatMul [16, 1] -> [B, 4, A, 1]

gives the same numbers (the 16 bins of one box side are summed in the same order) 8-12 % faster
per model run (``models/MODEL_CARD.md``). The conv's output feeds only a Reshape to [B, 4, A],
and [B, 1, 4, A] and [B, 4, A, 1] hold their values in the same order, so nothing downstream
changes; a graph where that is not so is left alone. The rewrite is checked, not assumed: the
rewritten file's raw output must equal the source's on a generated batch, or nothing is written.

The rewritten file keeps its metadata and records under ``scratchwatch_dfl`` how many decodes
were rewritten, the source's sha256 and the largest output difference found.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.onnx_export import save_variant

if TYPE_CHECKING:  # onnx is the training extra's
    import onnx

log = logging.getLogger(__name__)

DFL_KEY = "scratchwatch_dfl"
"""Metadata key: the decodes rewritten, the source's sha256 and the parity of the outputs."""
MAX_DIFF = 1e-4
"""Largest raw-output difference (box pixels or score) accepted between the rewritten file and its source."""


class FastDflError(ValueError):
    """The model cannot be rewritten (missing, not ONNX, no DFL decode, outputs changed): one line naming it."""


def rewrite_dfl(proto: onnx.ModelProto) -> int:
    """Rewrite every DFL decode of ``proto`` in place (see the module docstring); returns how many."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    if max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return 0  # Softmax before opset 13 flattens to 2-D: not the arithmetic this rewrite keeps
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {init.name: init for init in graph.initializer}
    rewritten = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        found = _dfl_around(softmax, producer, consumers, weights)
        if found is None:
            continue
        transpose, conv, bins = found
        prefix = f"{softmax.name or 'dfl'}_fast"
        arange = numpy_helper.from_array(bins.reshape(-1, 1).astype(np.float32), f"{prefix}_bins")
        graph.initializer.append(arange)
        replacement = [
            helper.make_node("Transpose", [transpose.input[0]], [f"{prefix}_sides_last"], perm=[0, 1, 3, 2], name=f"{prefix}_Transpose"),
            helper.make_node("Softmax", [f"{prefix}_sides_last"], [f"{prefix}_softmax"], axis=-1, name=f"{prefix}_Softmax"),
            helper.make_node("MatMul", [f"{prefix}_softmax", arange.name], [conv.output[0]], name=f"{prefix}_MatMul"),
        ]
        at = list(graph.node).index(transpose)
        for node in (transpose, softmax, conv):
            graph.node.remove(node)
        for offset, node in enumerate(replacement):
            graph.node.insert(at + offset, node)
        _drop_shape_info(graph, [transpose.output[0], softmax.output[0], conv.output[0]])
        if not any(conv.input[1] in n.input for n in graph.node):
            graph.initializer.remove(weights[conv.input[1]])
        rewritten += 1
    return rewritten


def _dfl_around(softmax, producer: dict, consumers: dict, weights: dict):
    """(transpose, conv, bin weights) when ``softmax`` is the middle of an exported DFL decode, else None."""
    from onnx import helper, numpy_helper

    axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), None)
    transpose = producer.get(softmax.input[0])
    after = consumers.get(softmax.output[0], [])
    if axis != 1 or transpose is None or transpose.op_type != "Transpose" or len(after) != 1 or after[0].op_type != "Conv":
        return None
    perm = next((list(helper.get_attribute_value(a)) for a in transpose.attribute if a.name == "perm"), None)
    conv = after[0]
    if perm != [0, 2, 1, 3] or len(consumers.get(transpose.output[0], [])) != 1 or len(conv.input) != 2 or conv.input[1] not in weights:
        return None  # a conv with a bias is not the fixed DFL sum
    plain = {"group": [1], "strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0]}
    if any(a.name in plain and list(np.atleast_1d(helper.get_attribute_value(a))) != plain[a.name] for a in conv.attribute):
        return None
    kernel = numpy_helper.to_array(weights[conv.input[1]])
    if kernel.ndim != 4 or kernel.shape[0] != 1 or kernel.shape[2:] != (1, 1):
        return None
    if not all(n.op_type == "Reshape" for n in consumers.get(conv.output[0], [])) or not consumers.get(conv.output[0]):
        return None  # only a Reshape reads [B, 1, 4, A] and [B, 4, A, 1] alike
    return transpose, conv, kernel[0, :, 0, 0]


def _drop_shape_info(graph, names: list[str]) -> None:
    """Stale inferred shapes of rewritten tensors would contradict the new layout."""
    for info in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(info)


def fast_dfl(model: Path, out: Path | None = None, *, required: bool = True) -> dict:
    """Rewrite ``model``'s DFL decodes into ``out`` (default: the model itself, replaced only by a
    checked file); returns the recipe, also stored in the file's metadata. A model without a DFL
    decode is an error, unless not ``required`` (then nothing is written: ``rewritten`` 0)."""
    import onnx

    out = out or model
    if not model.is_file():
        raise FastDflError(f"model {model}: not found")
    try:
        proto = onnx.load(str(model))
    except Exception as exc:
        raise FastDflError(f"model {model}: not an ONNX model ({exc})") from None
    source = onnx.ModelProto()
    source.CopyFrom(proto)  # the graph as it was, for the parity check
    count = rewrite_dfl(proto)
    if count == 0 and not required:
        return {"out": str(model), "rewritten": 0}
    if count == 0:
        raise FastDflError(f"model {model}: no exported DFL decode (Transpose, Softmax over axis 1, 1x1 Conv) to rewrite; "
                           "already rewritten, or not a YOLOv5u/v8 head")
    source_sha256 = hashlib.sha256(model.read_bytes()).hexdigest()

    def recipe(saved: Path) -> dict:
        diff = raw_difference(source, saved)
        if diff > MAX_DIFF:
            raise FastDflError(f"model {model}: the rewritten decode changed the raw output by {diff:.3g} "
                               f"(limit {MAX_DIFF:g}); nothing written")
        return {"source_sha256": source_sha256, "rewritten": count, "max_raw_diff": diff}

    made = save_variant(proto, out, DFL_KEY, recipe)
    log.info("wrote %s: %d DFL decode(s) rewritten, raw output within %.3g of %s", out, count, made["max_raw_diff"], model)
    return {"out": str(out), **made}


def raw_difference(source: onnx.ModelProto, rewritten: Path, seed: int = 0) -> float:
    """Largest difference of the raw outputs of the two graphs on one generated batch of 2."""
    import onnxruntime as ort

    runs = []
    for model in (source.SerializeToString(), str(rewritten)):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 2 if axis == 0 else 320 for axis, d in enumerate(spec.shape)]
        batch = np.random.default_rng(seed).random(shape, dtype=np.float32)
        runs.append(session.run(None, {spec.name: batch}))
    return max(float(np.abs(a - b).max()) for a, b in zip(*runs))
