"""Synthetic inputs for the pipeline tests and the latency bench: a real ONNX "scratch" model and
generated parking-lot clips with a planted red scratch mark.

The model is a genuine ONNX graph run by ONNX Runtime (Conv, ReduceSum, AveragePool, Sigmoid,
Concat...), so the tests exercise the real detector, batching and decoding. It "detects" red:
each grid cell scores by how much strongly red it holds, and every cell proposes the same box,
the red pixels' mean +/- their spread, so NMS folds the proposals into one detection per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RED_BGR = (0, 0, 255)


@dataclass(frozen=True)
class Mark:
    """A red scratch visible in frames [start, end) at x, y, w, h (frame pixels)."""

    start: int
    end: int
    box: tuple[int, int, int, int]

    def visible(self, index: int) -> bool:
        return self.start <= index < self.end


def build_red_model(
    path: Path, *, layout: str = "ultralytics", imgsz: int = 128, cell: int = 8, dynamic: bool = True
) -> Path:
    """Write the red-mark model: output [B, 5, N] (ultralytics) or [B, N, 6] (classic)."""
    return build_colour_model(path, (1.0, -0.5, -0.5), -0.5, "scratch", layout=layout, imgsz=imgsz, cell=cell, dynamic=dynamic)


def build_car_model(path: Path, *, imgsz: int = 128) -> Path:
    """The car stage's stand-in: finds the scene's blue car, classic head with objectness, class 'car'."""
    return build_colour_model(path, (-0.5, -0.5, 1.0), -0.2, "car", layout="classic", imgsz=imgsz)


def build_colour_model(
    path: Path, rgb_weights: tuple[float, float, float], bias: float, name: str, *, layout: str = "ultralytics",
    imgsz: int = 128, cell: int = 8, dynamic: bool = True,
) -> Path:
    """A one-class detector of one colour (pixel score = weights . RGB + bias, clipped at 0)."""
    batch = "batch" if dynamic else 1
    coords = np.arange(imgsz, dtype=np.float32) + 0.5
    inits = [
        numpy_helper.from_array(np.array(rgb_weights, np.float32).reshape(1, 3, 1, 1), "redness_w"),
        numpy_helper.from_array(np.array([bias], np.float32), "redness_b"),
        numpy_helper.from_array(np.tile(coords, (imgsz, 1)).reshape(1, 1, imgsz, imgsz), "xs"),
        numpy_helper.from_array(np.tile(coords[:, None], (1, imgsz)).reshape(1, 1, imgsz, imgsz), "ys"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "hw_axes"),
        numpy_helper.from_array(np.array([0, 1, -1], np.int64), "flat"),
        *(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in _CONSTANTS.items()),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "redness_w", "redness_b"], ["rho"]),
        helper.make_node("Relu", ["rho"], ["mass"]),
        helper.make_node("ReduceSum", ["mass", "hw_axes"], ["mass_sum0"], keepdims=1),
        helper.make_node("Add", ["mass_sum0", "eps"], ["mass_sum"]),
        *_moment_nodes("x", "xs"),
        *_moment_nodes("y", "ys"),
        helper.make_node("AveragePool", ["mass"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("Sub", ["pooled", "score_t"], ["pooled_c"]),
        helper.make_node("Mul", ["pooled_c", "score_k"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["score4"]),
        helper.make_node("Reshape", ["score4", "flat"], ["score"]),
        helper.make_node("Mul", ["score", "zero"], ["zeros"]),
        *(helper.make_node("Reshape", [f"{n}_1", "flat"], [f"{n}_r"]) for n in ("cx", "cy", "w", "h")),
        *(helper.make_node("Add", ["zeros", f"{n}_r"], [f"{n}_n"]) for n in ("cx", "cy", "w", "h")),
        helper.make_node("Concat", ["cx_n", "cy_n", "w_n", "h_n", "score"], ["yolo"], axis=1),
    ]
    if layout == "classic":
        nodes += [
            helper.make_node("Transpose", ["yolo"], ["rows"], perm=[0, 2, 1]),
            helper.make_node("Transpose", ["zeros"], ["zeros_t"], perm=[0, 2, 1]),
            helper.make_node("Exp", ["zeros_t"], ["cls_prob"]),  # exp(0) = 1: one class, always
            helper.make_node("Concat", ["rows", "cls_prob"], ["output0"], axis=2),
        ]
        out_shape = [batch, (imgsz // cell) ** 2, 6]
    else:
        nodes.append(helper.make_node("Identity", ["yolo"], ["output0"]))
        out_shape = [batch, 5, (imgsz // cell) ** 2]
    graph = helper.make_graph(
        nodes,
        f"red-mark-{layout}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"names": f"{{0: '{name}'}}", "imgsz": f"[{imgsz}, {imgsz}]", "stride": str(cell)}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


_CONSTANTS = {"eps": 1e-6, "zero": 0.0, "score_t": 0.02, "score_k": 100.0, "spread": 12**0.5, "min_side": 2.0}


def _moment_nodes(axis: str, coords: str) -> list[onnx.NodeProto]:
    """Mass-weighted mean (box centre) and spread (box side = std * sqrt(12)) along one axis."""
    centre, side = ("cx", "w") if axis == "x" else ("cy", "h")
    n = helper.make_node
    return [
        n("Mul", ["mass", coords], [f"m{axis}"]),
        n("ReduceSum", [f"m{axis}", "hw_axes"], [f"s{axis}"], keepdims=1),
        n("Div", [f"s{axis}", "mass_sum"], [f"{centre}_1"]),
        n("Mul", [f"m{axis}", coords], [f"m{axis}2"]),
        n("ReduceSum", [f"m{axis}2", "hw_axes"], [f"s{axis}2"], keepdims=1),
        n("Div", [f"s{axis}2", "mass_sum"], [f"e{axis}2"]),
        n("Mul", [f"{centre}_1", f"{centre}_1"], [f"{centre}_sq"]),
        n("Sub", [f"e{axis}2", f"{centre}_sq"], [f"var{axis}0"]),
        n("Relu", [f"var{axis}0"], [f"var{axis}"]),
        n("Sqrt", [f"var{axis}"], [f"std{axis}"]),
        n("Mul", [f"std{axis}", "spread"], [f"{side}0"]),
        n("Add", [f"{side}0", "min_side"], [f"{side}_1"]),
    ]


def scene(index: int, marks: list[Mark], size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A grey lot with a blue car that drifts slowly, plus every mark visible at ``index``."""
    width, height = size
    frame = np.full((height, width, 3), (90, 95, 100), dtype=np.uint8)
    cv2.line(frame, (0, height - 20), (width, height - 20), (230, 230, 230), 2)
    x = 40 + index % 8
    cv2.rectangle(frame, (x, 70), (x + 240, 170), (180, 90, 40), -1)  # body
    cv2.rectangle(frame, (x + 60, 45), (x + 180, 75), (120, 70, 40), -1)  # cabin
    cv2.rectangle(frame, (x + 75, 50), (x + 165, 72), (200, 200, 170), -1)  # windows
    for wheel in (x + 50, x + 190):
        cv2.circle(frame, (wheel, 170), 18, (20, 20, 20), -1)
    for mark in marks:
        if mark.visible(index):
            mx, my, mw, mh = mark.box
            cv2.rectangle(frame, (mx, my), (mx + mw - 1, my + mh - 1), RED_BGR, -1)
    return frame


def write_clip(path: Path, frames: int, marks: list[Mark], *, fps: float = 10.0, size: tuple[int, int] = (320, 240)) -> Path:
    """Encode a synthetic clip with OpenCV (mp4v for .mp4, MJPG otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    try:
        for index in range(frames):
            writer.write(scene(index, marks, size))
    finally:
        writer.release()
    return path


def build_grid_car_model(path: Path, *, imgsz: int = 320, cell: int = 32) -> Path:
    """A car stage stand-in that finds many cars: each grid cell mostly blue is one car, boxed by the cell.

    Classic head [B, N, 6] with objectness: what a frame with dozens of cars needs to test batching.
    """
    n = imgsz // cell
    centres = (np.arange(n, dtype=np.float32) + 0.5) * cell
    cx = np.tile(centres, n).reshape(1, n * n, 1)
    cy = np.repeat(centres, n).reshape(1, n * n, 1)
    inits = [
        numpy_helper.from_array(np.array([-0.5, -0.5, 1.0], np.float32).reshape(1, 3, 1, 1), "w"),
        numpy_helper.from_array(np.array([-0.2], np.float32), "b"),
        numpy_helper.from_array(np.concatenate([cx, cy, np.full_like(cx, cell), np.full_like(cx, cell)], axis=2), "boxes"),
        numpy_helper.from_array(np.array([0, -1, 1], np.int64), "flat"),
        numpy_helper.from_array(np.array(0.1, np.float32), "t"),
        numpy_helper.from_array(np.array(60.0, np.float32), "k"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["rho"]),
        helper.make_node("Relu", ["rho"], ["mass"]),
        helper.make_node("AveragePool", ["mass"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("Sub", ["pooled", "t"], ["centred"]),
        helper.make_node("Mul", ["centred", "k"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["obj4"]),
        helper.make_node("Reshape", ["obj4", "flat"], ["obj"]),  # [B, N, 1], row-major cells like `boxes`
        helper.make_node("Mul", ["obj", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "boxes"], ["box_rows"]),  # broadcast the cell boxes over the batch
        helper.make_node("Exp", ["zeros"], ["cls_prob"]),  # one class, 'car', always
        helper.make_node("Concat", ["box_rows", "obj", "cls_prob"], ["output0"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "grid-cars",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", n * n, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"names": "{0: 'car'}", "imgsz": f"[{imgsz}, {imgsz}]", "stride": str(cell)}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
