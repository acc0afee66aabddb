"""Half-precision copy of a model for GPUs: ``scratchwatch fp16 MODEL`` writes ``MODEL-fp16.onnx``.

The conversion is ONNX Runtime's own (``onnxruntime.transformers.float16``, shipped in both the
``onnxruntime`` and ``onnxruntime-gpu`` wheels): weights and activations become float16, with
``keep_io_types`` so the input stays float32 (the detector's letterbox writes float32) and the
output stays float32 (the decode reads it). Nothing else changes: ``detector.precision: fp16``
makes the pipeline run the copy of each model (``pipeline.detector.model_variant``), never silently.

The copy keeps the source's metadata (names, imgsz, threshold, ...) and records under
``scratchwatch_precision`` what was done and how far its raw output is from the source's on one
generated input (the GPU figures are ``bench/bench_gpu.py``'s).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from export.onnx_export import load_for_variant, save_variant
from pipeline.detector import model_variant, to_rows

log = logging.getLogger(__name__)

PRECISION_KEY = "scratchwatch_precision"
"""Metadata key: how the fp16 copy was made and its parity with the source on the CPU."""


class Fp16Error(ValueError):
    """The model cannot be converted (missing, not ONNX, already fp16): one line naming it."""


def convert_fp16(model: Path, out: Path | None = None) -> dict:
    """Write the float16 copy of ``model`` (default: ``MODEL-fp16.onnx`` next to it); returns the recipe,
    also stored in the copy's metadata."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = out or model_variant(model, "fp16")
    proto = load_for_variant(model, out, Fp16Error, "already an fp16 copy (its name ends in -fp16); give the fp32 source")
    half = convert_float_to_float16(proto, keep_io_types=True)
    source_sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    recipe = save_variant(half, out, PRECISION_KEY, lambda saved: {
        "source_model": model.name,
        "source_sha256": source_sha256,
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        **raw_parity(model, saved),
    })
    log.info("wrote %s (fp16 copy of %s): max box diff %.3g px, max score diff %.3g on the CPU",
             out, model, recipe["max_box_diff_px"], recipe["max_score_diff"])
    return {"out": str(out), **recipe}


def raw_parity(fp32: Path, fp16: Path, seed: int = 0) -> dict[str, float]:
    """Raw head outputs of both files on the CPU, on one generated input: the largest difference
    of the box coordinates (network pixels, every row) and of the scores."""
    from pipeline.detector import Detector

    source, half = Detector(fp32, provider="cpu"), Detector(fp16, provider="cpu")
    height, width = source.imgsz
    batch = np.random.default_rng(seed).random((1, 3, height, width), dtype=np.float32)
    return compare_raw(to_rows(source.run(batch), len(source.names)), to_rows(half.run(batch), len(half.names)))


def compare_raw(a: np.ndarray, b: np.ndarray, min_score: float = 0.0) -> dict[str, float]:
    """(B, N, 4 + nc) rows of two runs of one model: max box difference (rows where either scores
    ``min_score`` or more) and max score difference."""
    scores = np.maximum(a[..., 4:].max(axis=-1), b[..., 4:].max(axis=-1))
    boxes = np.abs(a[..., :4] - b[..., :4])[scores >= min_score]
    return {
        "max_box_diff_px": float(boxes.max()) if boxes.size else 0.0,
        "max_score_diff": float(np.abs(a[..., 4:] - b[..., 4:]).max()) if a.size else 0.0,
        "rows_compared": int(len(boxes)),
    }
