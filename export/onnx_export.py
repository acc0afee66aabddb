"""Export a trained checkpoint to ONNX and prove the ONNX model is the PyTorch model.

The pipeline only ever runs the ONNX file, so the file carries what the pipeline and a person
need to trust it: class names, image size, the hash of the training data, test metrics and the
opset, as ONNX metadata. The parity check runs both models on the test split through the same
preprocessing and decoding the pipeline uses, and fails the export if they disagree.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
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
            format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=OPSET, device="cpu"
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(produced, out)
    return out


def set_metadata(model_path: Path, values: dict[str, object]) -> None:
    """Add or replace ONNX metadata properties (non-strings stored as JSON)."""
    import onnx

    model = onnx.load(str(model_path))
    _put_metadata(model, values)
    onnx.save(model, str(model_path))


def _put_metadata(model, values: dict[str, object]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def load_for_variant(model: Path, out: Path, error: type[Exception], already: str):
    """The source of a derived copy (fp16, uint8 input), or one line naming it: missing, the copy itself, not ONNX."""
    import onnx

    if not model.is_file():
        raise error(f"model {model}: not found")
    if out.resolve() == model.resolve():
        raise error(f"model {model}: {already}")
    try:
        return onnx.load(str(model))
    except Exception as exc:
        raise error(f"model {model}: not an ONNX model ({exc})") from None


def save_variant(proto, out: Path, key: str, recipe: Callable[[Path], dict]) -> dict:
    """Save a derived copy of a model (fp16, uint8 input) with ``recipe(saved file)`` in its metadata
    under ``key``; ``out`` is replaced only by a finished file. Returns the recipe."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.stem}.staging.onnx")
    try:
        onnx.save(proto, str(staging))
        made = recipe(staging)
        _put_metadata(proto, {key: made})
        onnx.save(proto, str(staging))
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    return made


def trained_imgsz(checkpoint: Path) -> int:
    """The image size a checkpoint was trained at: the default export size, since any other costs accuracy."""
    from ultralytics import YOLO

    return int(YOLO(str(checkpoint)).ckpt["train_args"]["imgsz"])


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


def parity(checkpoint: Path, model: Path, data: Path, split: str = "test") -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same preprocessed batches; compare raw outputs and mAP."""
    from export.evaluate import BATCH, EVAL_CONF, EVAL_IOU, load_images, score
    from pipeline.detector import Detector

    detector = Detector(model, provider="cpu", conf_threshold=EVAL_CONF, iou_threshold=EVAL_IOU)
    images = load_images(data, split)
    frames = [im for _, im, _ in images]
    chunks = [detector.preprocess(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]
    torch_raw = torch_raw_outputs(checkpoint, [batch for batch, _ in chunks])
    onnx_raw = [detector.run(batch) for batch, _ in chunks]
    diffs = [np.abs(t - o) for t, o in zip(torch_raw, onnx_raw)]

    def detections(raws: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for raw, (_, boxes) in zip(raws, chunks):
            out.extend(box.to_frame(d)[:, :5] for box, d in zip(boxes, detector.decode(raw)))
        return out

    ev_torch, ev_onnx = score(images, detections(torch_raw)), score(images, detections(onnx_raw))
    return ParityReport(
        images=len(images),
        max_abs_diff=float(max(d.max() for d in diffs)),
        max_score_diff=float(max(d[:, 4:].max() for d in diffs)),
        map50_torch=ev_torch.map50,
        map50_onnx=ev_onnx.map50,
        map50_95_torch=ev_torch.map50_95,
        map50_95_onnx=ev_onnx.map50_95,
    )


def export_model(
    checkpoint: Path, data: Path, out: Path, imgsz: int, threshold: float | None = None, threshold_split: str = "val"
) -> dict:
    """Export, check parity on the test split, and embed provenance and metrics in the file.

    The operating threshold, unless given, is the F1-best one on ``threshold_split`` (val), never
    chosen on test.
    """
    # build next to `out` and replace it only once verified: a failed export never leaves an
    # unchecked file where the shipped model was
    staging = out.with_name(f".{out.stem}.staging.onnx")
    export_onnx(checkpoint, imgsz, staging)
    from export.dfl import fast_dfl

    fast_dfl(staging, required=False)  # the head's decode as ONNX Runtime runs it fastest; checked equal, then parity below
    report = parity(checkpoint, staging, data, "test")
    log.info("parity: %s", report.as_dict())
    if not report.ok:
        staging.unlink()
        raise RuntimeError(f"ONNX parity failed for {out}: {report.as_dict()}")
    scored = embed_evaluation(staging, data, threshold, threshold_split)
    set_metadata(staging, {"scratchwatch_parity": report.as_dict(), "scratchwatch_opset": str(OPSET)})
    os.replace(staging, out)
    return {"model": str(out), **scored, "parity": report.as_dict()}


def embed_evaluation(model: Path, data: Path, threshold: float | None = None, threshold_split: str = "val") -> dict:
    """Score ``model`` on ``data`` (test split, the pipeline's path) and store the metrics, the
    operating threshold (given, else the F1-best one on ``threshold_split``, never on test) and the
    data hash in its metadata; returns the threshold and metrics."""
    from export.dataset import dataset_hash
    from export.evaluate import at_threshold, evaluate_model
    from pipeline.detector import THRESHOLD_KEY

    val_ev, _, _ = evaluate_model(model, data, threshold_split, provider="cpu", progress=False)
    test_ev, _, _ = evaluate_model(model, data, "test", provider="cpu", progress=False)
    threshold = round(val_ev.best_threshold if threshold is None else threshold, 3)
    metrics = {
        "split": "test", **test_ev.as_dict(), "shipped": at_threshold(test_ev, threshold),
        "val_f1_best_threshold": round(val_ev.best_threshold, 4),
    }
    set_metadata(model, {
        "scratchwatch_data_hash": dataset_hash(data.parent if data.suffix in (".yaml", ".yml") else data),
        "scratchwatch_metrics": metrics,
        THRESHOLD_KEY: str(threshold),
    })
    return {"threshold": threshold, "metrics": metrics}
