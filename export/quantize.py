"""INT8 damage model for CPUs: ONNX Runtime static quantization, calibrated through our letterbox.

A CPU lot box with AVX-512 VNNI (or AVX-VNNI) runs int8 convolutions several times faster than
fp32 ones. Static quantization needs activation ranges; they are measured on the validation
split, each photo fitted exactly as the pipeline fits a frame (``pipeline.detector.letterbox_into``),
so the ranges are the ones the model will see in service.

Only the network is quantized. The detection head's decode tail (DFL softmax, anchor grid,
box arithmetic, the final sigmoid and the concat of pixel boxes with 0..1 scores) stays float:
one int8 scale cannot hold both 480 px coordinates and scores 0.01 apart. The head module's own
convs stay float too (``float_head``), and ``keep_float`` leaves more layers float by name.

Measured on the shipped model (bench/README.md): the SiLU's Sigmoid and Mul must be quantized
with the convs, or the graph fills with Quantize/Dequantize pairs and int8 is slower than fp32;
activation ranges averaged per image (``average``) lose less mAP than the global min/max, and one
weight scale per tensor less than one per output channel (0.180 against 0.177 test mAP@0.5).

The int8 file is never used silently: a person points ``detector.model`` at it. It carries the
source model's metadata (names, imgsz, threshold, ...) plus ``scratchwatch_quantization``, what
was done and on which data.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # onnx is the training extra's: imported only when a model is quantized
    import onnx

log = logging.getLogger(__name__)

QUANT_KEY = "scratchwatch_quantization"
"""Metadata key: how the int8 model was made (format, per-channel, calibration data, ops)."""
FORMATS = ("qdq", "qoperator")
QUANTIZED_OPS = ["Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize", "Split"]
"""Op types quantized in the network (the SiLU's Sigmoid and Mul included: they sit between convs)."""


class QuantizeError(ValueError):
    """Bad input for quantization (no calibration images, an unreadable model): one line naming it."""


def calibration_images(data: Path, split: str = "val", limit: int | None = None) -> list[Path]:
    """The split's image files, sorted, evenly thinned to ``limit``."""
    from export.dataset import DatasetError, load_split

    try:
        paths = [path for path, _ in load_split(data, split)]
    except DatasetError as exc:
        raise QuantizeError(str(exc)) from exc
    if not paths:
        raise QuantizeError(f"{data}: the '{split}' split has no images to calibrate on")
    if limit and len(paths) > limit:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def letterboxed(paths: list[Path], imgsz: tuple[int, int]) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 inputs, each photo fitted as the detector fits a frame."""
    from pipeline.detector import letterbox_into

    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("calibration: skipping %s, it does not decode", path)
            continue
        batch = np.empty((1, 3, *imgsz), dtype=np.float32)
        letterbox_into(image, batch[0])
        yield batch


def decode_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the head's decode nodes: those no learned Conv depends on (the DFL conv is fixed
    arithmetic, not learned). Everything upstream of the last learned convs is the network."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    learned = [n for n in graph.node if n.op_type == "Conv" and "dfl" not in n.name.lower()]
    network: set[str] = set()
    stack = list(learned)
    while stack:
        node = stack.pop()
        if node.name in network:
            continue
        network.add(node.name)
        stack.extend(producer[name] for name in node.input if name in producer)
    return [n.name for n in graph.node if n.name not in network]


def head_module(model: onnx.ModelProto, tail: list[str]) -> list[str]:
    """All nodes of the module the decode tail belongs to (ultralytics names them ``/model.24/...``;
    in an ensemble each member's copy is ``m0_/model.24/...``, ``m1_/model.24/...``): the detection
    head's own convs, whose box-distribution logits int8 blurs most. [] if unnamed or ambiguous."""
    parts = [name.split("/") for name in tail if name.count("/") > 1]
    prefixes = {f"{p[0]}/{p[1]}/" for p in parts if p[1] and (p[0] == "" or p[0].endswith("_"))}
    if len({prefix.split("/")[1] for prefix in prefixes}) != 1:
        return []
    return [node.name for node in model.graph.node if node.name.startswith(tuple(prefixes))]


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes unique names (exporters may leave them empty)."""
    taken = {node.name for node in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def _prepared(model: Path, folder: Path) -> tuple[Path, onnx.ModelProto]:
    """ONNX Runtime's pre-processing (shape inference, folding) with every node named."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = folder / "prepared.onnx"
    # symbolic shape inference gives up on the dynamic H/W axes; ONNX's own inference is enough
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared))
    _name_nodes(graph)  # nodes are excluded by name
    onnx.save(graph, str(prepared))
    return prepared, graph


def float_nodes(graph: onnx.ModelProto, float_head: bool, keep_float: list[str]) -> list[str]:
    """Nodes left in float: the decode tail, the head module's convs (``float_head``) and any node
    whose name starts with one of ``keep_float``."""
    excluded = set(decode_tail(graph))
    if float_head:
        excluded |= set(head_module(graph, sorted(excluded)))
    excluded |= {n.name for n in graph.graph.node if keep_float and n.name.startswith(tuple(keep_float))}
    return sorted(excluded)


def quantize_model(
    model: Path, data: Path, out: Path, *, split: str = "val", limit: int | None = None,
    fmt: str = "qdq", per_channel: bool = False, method: str = "average", float_head: bool = True,
    ops: list[str] | None = None, keep_float: list[str] | None = None,
) -> dict:
    """Quantize ``model`` to int8 (weights int8, activations uint8) and write ``out`` with metadata.

    Returns what was done (also stored in the file under ``scratchwatch_quantization``).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.onnx_export import read_metadata, set_metadata
    from pipeline.detector import Detector

    if fmt not in FORMATS:
        raise QuantizeError(f"unknown quantization format {fmt!r}: use one of {', '.join(FORMATS)}")
    methods = {"minmax": CalibrationMethod.MinMax, "average": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise QuantizeError(f"unknown calibration method {method!r}: use one of {', '.join(methods)}")
    paths = calibration_images(data, split, limit)  # bad data is named before the model is loaded (and logged)
    source = Detector(model, provider="cpu")  # also: the model exists and ONNX Runtime loads it

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = letterboxed(paths, source.imgsz)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {source.input_name: batch}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.staging.onnx")  # `out` is replaced only by a finished file
    with tempfile.TemporaryDirectory(prefix="scratchwatch-quantize-") as tmp:
        prepared, graph = _prepared(model, Path(tmp))
        excluded = float_nodes(graph, float_head, keep_float or [])
        try:
            quantize_static(
                str(prepared), str(staging), Reader(),
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=ops or QUANTIZED_OPS, nodes_to_exclude=excluded, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method],
                extra_options={"CalibTensorRangeSymmetric": False, "CalibMovingAverage": method == "average"},
            )
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
    recipe = {
        "source_model": model.name, "source_sha256": source.model_sha256, "format": fmt,
        "per_channel": per_channel, "weights": "int8", "activations": "uint8", "calibration": method,
        "calibration_data": f"{data} [{split}]", "calibration_images": len(paths),
        "preprocessing": "pipeline.detector.letterbox_into", "float_nodes": len(excluded), "float_head": float_head,
        "keep_float": keep_float or [],
        "quantized_ops": ops or QUANTIZED_OPS,
    }
    meta = {k: v for k, v in read_metadata(model).items() if k != "opset"}
    set_metadata(staging, {**meta, QUANT_KEY: recipe})
    staging.replace(out)
    return recipe


def quant_recipe(model: Path) -> dict | None:
    """What ``quantize_model`` stored in a model, or None for a model it did not make."""
    from export.onnx_export import read_metadata

    value = read_metadata(model).get(QUANT_KEY)
    return json.loads(value) if value else None
