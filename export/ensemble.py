"""Several damage models as one ONNX file: ``scratchwatch ensemble OUT MODEL... [--flip]``.

Why: no single model this project can train reaches a useful recall at a precision a person will
trust (v2: recall 0.07 at P 0.62), but models trained differently (v2: 480 px on 2 CPU cores; v3:
640 px with car crops on a GPU) err differently. Averaging their raw head outputs *anchor by
anchor* (every model at the same input size has the same grid of anchor points) keeps a box only
where the models agree, which raises the scores of real damage relative to the one-model mistakes;
a horizontally mirrored view of the input (``--flip``) is one more such opinion.

The result is one graph with one input and one ``[B, 4+nc, N]`` output, exactly the shape of its
members' output, so the pipeline runs it like any model: the detector, the car gate, ``detect``,
``evaluate``, the fp16/uint8/int8 copies and TensorRT need nothing new. The mirrored view is
built into the graph: the batch is doubled with the width-reversed input, and the mirrored half's
output is brought back to the original anchor order (a precomputed gather over each grid level's
columns) with its box centre reflected (``cx -> W - cx``), so its anchors average with the same
anchors of the plain view. Mirroring needs a fixed input size, so the ensemble's input has static
height and width (the members' ``imgsz``); the batch axis stays dynamic.

The file records its members (name and sha256), the views and a parity check (the graph's raw
output against the mean of the members' own outputs, computed outside the graph) under
``scratchwatch_ensemble``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from export.dfl import rewrite_dfl
from export.onnx_export import _put_metadata, save_variant

log = logging.getLogger(__name__)

ENSEMBLE_KEY = "scratchwatch_ensemble"
"""Metadata key: the members, the views and the parity of the graph against its members."""
STALE_KEYS = ("scratchwatch_metrics", "scratchwatch_parity", "scratchwatch_data_hash", "description", "date")
"""The first member's metadata that describes that member, not the ensemble: dropped."""


class EnsembleError(ValueError):
    """The members cannot be combined (missing, not ONNX, different heads or sizes): one line naming the file."""


def anchor_levels(anchors: int, imgsz: tuple[int, int], stride: int) -> list[tuple[int, int]]:
    """The (rows, columns) of each grid level in the head's anchor order.

    YOLOv5u/v8 heads concatenate three levels at strides stride/4, stride/2 and stride (8, 16, 32
    for the metadata's stride 32); a one-level head has one grid at ``stride``. Anything else
    cannot be mirrored without guessing, so it is refused."""
    height, width = imgsz
    for strides in ((stride // 4, stride // 2, stride), (stride,)):
        if all(s > 0 and height % s == 0 and width % s == 0 for s in strides):
            levels = [(height // s, width // s) for s in strides]
            if sum(r * c for r, c in levels) == anchors:
                return levels
    raise EnsembleError(f"{anchors} anchors at {width}x{height} fit no grid of stride {stride}: cannot mirror this head")


def mirror_order(levels: list[tuple[int, int]]) -> np.ndarray:
    """For each anchor of the mirrored view, the anchor of the plain view at the mirrored position."""
    order, offset = [], 0
    for rows, cols in levels:
        order.append(np.arange(rows * cols).reshape(rows, cols)[:, ::-1].ravel() + offset)
        offset += rows * cols
    return np.concatenate(order).astype(np.int64)


def build_ensemble(members: list[Path], out: Path, *, flip: bool = False, threshold: float | None = None) -> dict:
    """Write the ensemble of ``members`` (metadata from the first) to ``out``; returns its recipe."""
    import onnx
    from onnx import compose, helper, numpy_helper

    if not members or (len(members) < 2 and not flip):
        raise EnsembleError("an ensemble needs two models, or one with --flip")
    protos = [_load(path) for path in members]
    meta = {p.key: p.value for p in protos[0].metadata_props}
    imgsz, anchors, channels = _common_head(members, protos)
    height, width = imgsz
    first_input = protos[0].graph.input[0]
    x = helper.make_tensor_value_info(first_input.name, first_input.type.tensor_type.elem_type, ["batch", 3, height, width])
    nodes, inits, views = [], [], []
    feed = x.name
    if flip:
        order = mirror_order(anchor_levels(anchors, imgsz, int(meta.get("stride", 32))))
        reflect = np.ones((1, channels, 1), np.float32)
        reflect[0, 0, 0] = -1.0
        shift = np.zeros((1, channels, 1), np.float32)
        shift[0, 0, 0] = width
        for name, value in {
            "ens_last": [-1], "ens_before_first": [-(2**62)], "ens_axis_w": [3], "ens_back": [-1], "ens_zero": [0],
            "ens_one": [1], "ens_end": [2**62],
        }.items():
            inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        inits += [numpy_helper.from_array(order, "ens_mirror_order"), numpy_helper.from_array(reflect, "ens_reflect"),
                  numpy_helper.from_array(shift, "ens_shift")]
        nodes += [
            helper.make_node("Slice", [x.name, "ens_last", "ens_before_first", "ens_axis_w", "ens_back"], ["ens_x_mirrored"]),
            helper.make_node("Concat", [x.name, "ens_x_mirrored"], ["ens_x2"], axis=0),
            helper.make_node("Shape", [x.name], ["ens_shape"]),
            helper.make_node("Slice", ["ens_shape", "ens_zero", "ens_one"], ["ens_batch"]),
        ]
        feed = "ens_x2"
    for k, proto in enumerate(protos):
        graph = compose.add_prefix(proto, f"m{k}_").graph
        nodes.append(helper.make_node("Identity", [feed], [graph.input[0].name]))
        nodes.extend(graph.node)
        inits.extend(graph.initializer)
        raw = graph.output[0].name
        if not flip:
            views.append(raw)
            continue
        nodes += [
            helper.make_node("Slice", [raw, "ens_zero", "ens_batch", "ens_zero"], [f"m{k}_plain"]),
            helper.make_node("Slice", [raw, "ens_batch", "ens_end", "ens_zero"], [f"m{k}_mirrored"]),
            helper.make_node("Gather", [f"m{k}_mirrored", "ens_mirror_order"], [f"m{k}_reordered"], axis=2),
            helper.make_node("Mul", [f"m{k}_reordered", "ens_reflect"], [f"m{k}_reflected"]),
            helper.make_node("Add", [f"m{k}_reflected", "ens_shift"], [f"m{k}_unmirrored"]),
        ]
        views += [f"m{k}_plain", f"m{k}_unmirrored"]
    first_output = protos[0].graph.output[0]
    y = helper.make_tensor_value_info(first_output.name, first_output.type.tensor_type.elem_type, ["batch", channels, anchors])
    nodes.append(helper.make_node("Mean", views, [y.name]))
    merged = helper.make_model(helper.make_graph(nodes, "scratchwatch-ensemble", [x], [y], inits),
                               opset_imports=protos[0].opset_import, ir_version=protos[0].ir_version)
    rewrite_dfl(merged)  # members exported before export.dfl existed run their decode faster too; the parity below checks it
    onnx.checker.check_model(merged)
    _put_metadata(merged, {k: v for k, v in meta.items() if k not in STALE_KEYS})
    if threshold is not None:
        from pipeline.detector import THRESHOLD_KEY

        _put_metadata(merged, {THRESHOLD_KEY: str(threshold)})
    shas = [hashlib.sha256(path.read_bytes()).hexdigest() for path in members]
    recipe = save_variant(merged, out, ENSEMBLE_KEY, lambda saved: {
        "members": [{"model": path.name, "sha256": sha} for path, sha in zip(members, shas)],
        "flip": flip, "views": len(views), "imgsz": [height, width],
        **ensemble_parity(saved, members, flip),
    })
    log.info("wrote %s: %d views of %d models, max raw diff %.3g against the members' mean",
             out, len(views), len(members), recipe["max_raw_diff"])
    return {"out": str(out), **recipe}


def ensemble_parity(ensemble: Path, members: list[Path], flip: bool, seed: int = 0) -> dict[str, float]:
    """The ensemble's raw output on one generated batch of two against the members' own outputs,
    averaged here (the mirrored view: the reversed input run by each member, its anchors put back
    per grid level with numpy and its centre reflected)."""
    import onnxruntime as ort

    def session(path: Path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    whole = session(ensemble)
    inp = whole.get_inputs()[0]
    height, width = inp.shape[2:4]
    batch = np.random.default_rng(seed).random((2, 3, height, width), dtype=np.float32)
    got = whole.run(None, {inp.name: batch})[0]
    views = []
    for path in members:
        member = session(path)
        name = member.get_inputs()[0].name
        views.append(member.run(None, {name: batch})[0])
        if flip:
            mirrored = member.run(None, {name: np.ascontiguousarray(batch[..., ::-1])})[0]
            back = np.empty_like(mirrored)
            offset = 0
            for rows, cols in anchor_levels(mirrored.shape[2], (height, width), int(_stride(whole))):
                grid = mirrored[:, :, offset : offset + rows * cols].reshape(2, -1, rows, cols)[..., ::-1]
                back[:, :, offset : offset + rows * cols] = grid.reshape(2, -1, rows * cols)
                offset += rows * cols
            back[:, 0] = width - back[:, 0]
            views.append(back)
    return {"max_raw_diff": float(np.abs(got - np.mean(views, axis=0)).max())}


def _stride(session) -> int:
    return int(session.get_modelmeta().custom_metadata_map.get("stride", 32))


def _load(path: Path):
    import onnx

    if not path.is_file():
        raise EnsembleError(f"model {path}: not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise EnsembleError(f"model {path}: not an ONNX model ({exc})") from None


def _common_head(members: list[Path], protos: list) -> tuple[tuple[int, int], int, int]:
    """The shared input size, anchor count and output channels; a member that differs is named.

    Sizes come from each member's ``imgsz`` metadata or fixed input; a member with a dynamic input
    (ultralytics' export) runs at the first member's size, which is the point of a fully
    convolutional head. The output shape is measured by running each member once on the CPU."""
    import onnxruntime as ort

    from pipeline.detector import _imgsz

    meta = {p.key: p.value for p in protos[0].metadata_props}
    imgsz = _imgsz(meta, [d.dim_value or d.dim_param for d in protos[0].graph.input[0].type.tensor_type.shape.dim])
    shapes = []
    for path, proto in zip(members, protos):
        dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
        fixed = [d for d in dims[2:4] if isinstance(d, int) and d > 0]
        if fixed and tuple(dims[2:4]) != imgsz:
            raise EnsembleError(f"model {path}: fixed input {dims[2:4]} differs from the first model's {list(imgsz)}")
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        if session.get_inputs()[0].type != "tensor(float)":
            raise EnsembleError(f"model {path}: input is {session.get_inputs()[0].type}; combine the float32 models, then convert")
        raw = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, *imgsz), np.float32)})[0]
        names = {p.key: p.value for p in proto.metadata_props}.get("names")
        if raw.ndim != 3 or raw.shape[1] > raw.shape[2] or names != meta.get("names"):
            raise EnsembleError(f"model {path}: output {list(raw.shape)} with names {names} is not a "
                                f"[B, 4+nc, N] head for the first model's classes {meta.get('names')}")
        shapes.append(raw.shape)
    if len(set(shapes)) > 1:
        raise EnsembleError(f"outputs differ at {imgsz[1]}x{imgsz[0]}: " + ", ".join(
            f"{path.name} {list(shape)}" for path, shape in zip(members, shapes)))
    return imgsz, int(shapes[0][2]), int(shapes[0][1])
