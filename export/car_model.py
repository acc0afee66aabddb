"""The car stage's model: COCO YOLOv5n with its original anchor-based head, rebuilt and exported.

Why rebuild: ultralytics' YOLOv5u head is anchor-free, so only 342 of the checkpoint's 349
tensors load into ``yolov5n.yaml``; the COCO head (layer 24: three 1x1 convolutions and the
anchors, in stride units) is exactly what finds vehicles, so it is rebuilt here around
ultralytics' backbone and neck and all 349 tensors load. The ONNX output is the classic layout
``[B, N, 5 + 80]`` (cx cy w h in input pixels, objectness, class probabilities), which
``pipeline.detector`` already decodes; the car stage reads objectness from it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass "
    "cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
STRIDES = (8, 16, 32)
HEAD_INPUTS = (17, 20, 23)


def build_classic_yolov5n(state_dict: dict):
    """yolov5n.yaml's layers 0-23 plus the classic head, with every checkpoint tensor loaded."""
    import torch
    from torch import nn
    from ultralytics.nn.tasks import DetectionModel

    class ClassicHead(nn.Module):
        """YOLOv5's Detect: per level sigmoid, xy = (2s - 0.5 + grid) * stride, wh = (2s)^2 * anchor."""

        def __init__(self, anchors: torch.Tensor, channels: tuple[int, ...], nc: int) -> None:
            super().__init__()
            self.nc, self.no, self.na = nc, nc + 5, anchors.shape[1]
            self.register_buffer("anchors", anchors.clone())
            self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

        def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
            out = []
            for level, (conv, x) in enumerate(zip(self.m, features)):
                b, _, h, w = x.shape
                y = conv(x).view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
                gy, gx = torch.meshgrid(torch.arange(h, dtype=y.dtype), torch.arange(w, dtype=y.dtype), indexing="ij")
                grid = torch.stack((gx, gy), 2).view(1, 1, h, w, 2)
                stride = STRIDES[level]
                anchor = (self.anchors[level] * stride).view(1, self.na, 1, 1, 2)
                xy = (y[..., :2] * 2 - 0.5 + grid) * stride
                wh = (y[..., 2:4] * 2) ** 2 * anchor
                out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(b, -1, self.no))
            return torch.cat(out, 1)

    class ClassicYolov5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            body = DetectionModel("yolov5n.yaml", nc=80, verbose=False).model
            self.model = nn.Sequential(*body[:24])
            anchors = state_dict["model.24.anchors"]
            channels = tuple(state_dict[f"model.24.m.{i}.weight"].shape[1] for i in range(3))
            self.model.add_module("24", ClassicHead(anchors, channels, 80))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            saved: list[torch.Tensor | None] = []
            for layer in list(self.model)[:24]:
                if layer.f != -1:
                    x = [x if j == -1 else saved[j] for j in layer.f] if isinstance(layer.f, list) else saved[layer.f]
                x = layer(x)
                saved.append(x)
            return self.model[24]([saved[i] for i in HEAD_INPUTS])

    model = ClassicYolov5()
    model.load_state_dict(state_dict, strict=True)  # every one of the checkpoint's tensors, or an error
    return model.eval()


def export_car_model(weights: Path, out: Path, imgsz: int, expected_sha256: str | None) -> dict:
    """Load all 349 tensors, export ONNX (dynamic batch, opset 17), check parity; returns the report."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from export.onnx_export import OPSET
    from export.weights import load_yolov5_state_dict, sha256_file

    state = load_yolov5_state_dict(weights, expected_sha256)
    model = build_classic_yolov5n(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_suffix(".tmp.onnx")
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    torch.onnx.export(
        model, dummy, str(staged), opset_version=OPSET, input_names=["images"], output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, dynamo=False,
    )
    probe = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(probe).numpy()
    got = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"]).run(None, {"images": probe.numpy()})[0]
    parity = {"max_abs_diff_px": float(np.abs(expected[..., :4] - got[..., :4]).max()),
              "max_score_diff": float(np.abs(expected[..., 4:] - got[..., 4:]).max())}
    if parity["max_abs_diff_px"] > 0.05 or parity["max_score_diff"] > 1e-4:
        staged.unlink()
        raise RuntimeError(f"car model export differs from PyTorch: {parity}")
    proto = onnx.load(str(staged))
    metadata = {
        "names": repr(dict(enumerate(COCO_NAMES))), "imgsz": repr([imgsz, imgsz]), "stride": "32",
        "scratchwatch_role": "car", "scratchwatch_source": f"{weights.name} sha256 {sha256_file(weights)}",
        "scratchwatch_tensors_loaded": str(len(state)), "scratchwatch_parity": json.dumps(parity),
        "license": "AGPL-3.0 (Ultralytics YOLOv5 COCO weights)",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(staged))
    staged.replace(out)
    report = {"tensors_loaded": len(state), "imgsz": imgsz, "parity": parity, "out": str(out)}
    log.info("car model %s: %s", out, report)
    return report
