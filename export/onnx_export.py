"""Export a trained checkpoint to ONNX and prove the ONNX model is the PyTorch model.

The pipeline only ever runs the ONNX file, so the file carries what the pipeline and a person
need to trust it: class names, image size, the hash of the training data, test metrics and the
opset, as ONNX metadata. The parity check runs both models on the test split through the same
preprocessing and decoding the pipeline uses, and fails the export if they disagree.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
MAX_MAP_DIFF = 0.005


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float  # largest difference of raw outputs (box pixels and scores)
    max_score_diff: float
    map50_torch: float
    map50_onnx: float
    map50_95_torch: float
    map50_95_onnx: float

    @property
    def map_diff(self) -> float:
        return max(abs(self.map50_torch - self.map50_onnx), abs(self.map50_95_torch - self.map50_95_onnx))

    @property
    def ok(self) -> bool:
        return self.map_diff <= MAX_MAP_DIFF

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "max_abs_diff": round(self.max_abs_diff, 6),
            "max_score_diff": round(self.max_score_diff, 6),
            "map50_torch": round(self.map50_torch, 4),
            "map50_onnx": round(self.map50_onnx, 4),
            "map50_95_torch": round(self.map50_95_torch, 4),
            "map50_95_onnx": round(self.map50_95_onnx, 4),
            "map_diff": round(self.map_diff, 5),
            "ok": self.ok,
        }


def export_onnx(checkpoint: Path, imgsz: int, out: Path) -> Path:
    """ultralytics' exporter (fused, export-mode head) with a dynamic batch axis and a stated opset."""
    from ultralytics import YOLO

    produced = Path(
        YOLO(str(checkpoint)).export(
            format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=OPSET, device="cpu", half=False
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(produced, out)
    return out


def set_metadata(model_path: Path, values: dict[str, object]) -> None:
    """Add or replace ONNX metadata properties (non-strings stored as JSON)."""
    import onnx

    model = onnx.load(str(model_path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(model_path))


def read_metadata(model_path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    meta["opset"] = str(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))
    return meta


def torch_raw_outputs(checkpoint: Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Raw [B, 4+nc, N] outputs of the PyTorch model on already-preprocessed batches."""
    import torch
    from ultralytics import YOLO

    model = YOLO(str(checkpoint)).model.float().eval()
    outs = []
    with torch.no_grad():
        for batch in batches:
            y = model(torch.from_numpy(batch))
            outs.append((y[0] if isinstance(y, (list, tuple)) else y).numpy())
    return outs
