"""A trainable ultralytics checkpoint rebuilt from one of our exported ONNX models.

Why: the shipped ONNX file is the only copy of a model that every session keeps (training runs
are not committed), so the next model must be able to start from it instead of from COCO.
ultralytics' exporter fuses each BatchNorm into its convolution: the file holds ``W'`` and
``b'`` with ``conv(x) = W'x + b'``. Training needs the BatchNorm back. Setting it to
``mean = mu, var = v, gamma = sqrt(v + eps), beta = mu + b'`` reproduces ``W'x + b'`` exactly in
eval mode for *any* ``mu, v``; choosing ``mu, v`` as the real per-channel statistics of ``W'x`` on
training images makes train mode (batch statistics) start where the exported model is, too.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
MODEL_YAML = "yolov5n.yaml"
CALIBRATION_IMAGES = 64


class OnnxInitError(ValueError):
    """The ONNX file is not a YOLOv5u export of ours whose tensors map onto yolov5n.yaml."""


def _fused_tensors(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise OnnxInitError(f"{onnx_path}: not an ONNX model ({exc})") from exc
    tensors = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.startswith("model.")}
    return tensors, {p.key: p.value for p in proto.metadata_props}


def _restore(model, tensors: dict[str, np.ndarray]) -> list[tuple[object, object, np.ndarray]]:
    """Copy every tensor in; return (conv, bn, fused bias) for the convolutions whose BN was fused."""
    import torch

    modules = dict(model.named_modules())
    state = model.state_dict()
    fused: list[tuple[object, object, np.ndarray]] = []
    used = set()
    with torch.no_grad():
        for name, array in tensors.items():
            owner, _, kind = name.rpartition(".")
            parent = owner.rpartition(".")[0]
            if name in state and state[name].shape == array.shape:
                state[name].copy_(torch.from_numpy(array.copy()))
                used.add(name)
            elif kind == "bias" and owner.endswith(".conv") and f"{parent}.bn.weight" in state:
                fused.append((modules[owner], modules[f"{parent}.bn"], array))
                used.add(name)
    # the DFL conv's weights are the fixed bins 0..15 the model is built with (never trained), and a
    # file rewritten by `scratchwatch fast-dfl` holds them as a MatMul constant: not missing
    missing = [k for k in state if k.endswith(".weight") and k not in used and not k.endswith("bn.weight") and ".dfl." not in k]
    if missing or not fused:
        raise OnnxInitError(f"ONNX tensors do not map onto {MODEL_YAML}: {len(missing)} weights missing, e.g. {missing[:3]}")
    return fused


def _conv_statistics(model, fused, images: list[np.ndarray]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and variance of each fused convolution's ``W'x`` in the exported model."""
    import torch

    sums: dict[int, list] = {id(conv): [0.0, 0.0, 0] for conv, _, _ in fused}

    def hook(conv, _inputs, output):
        out = output.detach().double()
        entry = sums[id(conv)]
        entry[0] = entry[0] + out.sum(dim=(0, 2, 3))
        entry[1] = entry[1] + (out * out).sum(dim=(0, 2, 3))
        entry[2] += out.numel() // out.shape[1]

    handles = [conv.register_forward_hook(hook) for conv, _, _ in fused]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), 8):
            model(torch.from_numpy(np.stack(images[start : start + 8])))
    for handle in handles:
        handle.remove()
    stats = {}
    for key, (total, squares, count) in sums.items():
        mean = (total / count).numpy()
        stats[key] = (mean, np.maximum((squares / count).numpy() - mean * mean, 1e-6))
    return stats


def _set_identity_bn(fused) -> None:
    """BN that passes ``W'x + b'`` through unchanged (mean 0, var 1): the exported model exactly."""
    import torch

    with torch.no_grad():
        for _, bn, bias in fused:
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(float(np.sqrt(1.0 + bn.eps)))
            bn.bias.copy_(torch.from_numpy(bias.copy()))


def _inflate_bn(fused, stats) -> None:
    import torch

    with torch.no_grad():
        for conv, bn, bias in fused:
            mean, var = stats[id(conv)]
            bn.running_mean.copy_(torch.from_numpy(mean))
            bn.running_var.copy_(torch.from_numpy(var))
            bn.weight.copy_(torch.from_numpy(np.sqrt(var + bn.eps)))
            bn.bias.copy_(torch.from_numpy(mean + bias))


def calibration_batch(image_dir: Path, imgsz: int, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Training photos letterboxed the way the detector sees them (CHW float RGB in [0, 1])."""
    import cv2

    from export.dataset import IMAGE_SUFFIXES
    from pipeline.detector import letterbox_into

    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    step = max(1, len(paths) // count)
    batch = []
    for path in paths[::step][:count]:
        image = cv2.imread(str(path))
        if image is not None:
            out = np.empty((3, imgsz, imgsz), dtype=np.float32)
            letterbox_into(image, out)
            batch.append(out)
    if not batch:
        raise OnnxInitError(f"no calibration images in {image_dir}")
    return batch


def checkpoint_from_onnx(onnx_path: Path, out: Path, calibration_dir: Path) -> dict:
    """Write an ultralytics checkpoint equal to ``onnx_path``; returns a report for transfer.json."""
    import ast

    import torch
    import ultralytics
    from ultralytics.nn.tasks import DetectionModel

    tensors, metadata = _fused_tensors(onnx_path)
    names = ast.literal_eval(metadata.get("names", "{0: 'scratch'}"))
    imgsz = ast.literal_eval(metadata.get("imgsz", "[480, 480]"))[0]
    model = DetectionModel(MODEL_YAML, nc=len(names), verbose=False)
    fused = _restore(model, tensors)
    _set_identity_bn(fused)
    _inflate_bn(fused, _conv_statistics(model, fused, calibration_batch(calibration_dir, imgsz)))
    model.names = names
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {}, "version": ultralytics.__version__, "date": time.ctime()}, out)
    summary = f"rebuilt from {onnx_path.name}: {len(tensors)} tensors, {len(fused)} BatchNorms re-inflated"
    log.info("%s", summary)
    return {"source": str(onnx_path), "summary": summary, "imgsz": imgsz}
