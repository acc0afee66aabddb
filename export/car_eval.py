"""How well the car stage finds cars: precision and recall at IoU 0.5 on hand-checked frames.

The labels (``bench/data/*.json``) name a clip and, per frame index, every visible car's box.
Matching is the evaluation's own (``export.metrics.match``), greedy by falling score.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from export.metrics import match


def labelled_frames(labels_path: Path, repo: Path) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """The labelled frames of the clip (decoded in order) and their (K, 4) boxes."""
    labels = json.loads(labels_path.read_text())
    wanted = {int(k): np.asarray(v, dtype=np.float32).reshape(-1, 4) for k, v in labels["frames"].items()}
    capture = cv2.VideoCapture(str(repo / labels["clip"]))
    frames, truth, index = [], [], 0
    try:
        while len(frames) < len(wanted):
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"{labels['clip']} ended at frame {index}; {labels_path} labels frames up to {max(wanted)}")
            if index in wanted:
                frames.append(frame)
                truth.append(wanted[index])
            index += 1
    finally:
        capture.release()
    return frames, truth, labels


def car_stage_accuracy(cars, frames: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """P, R and counts of a ``pipeline.cars.CarDetector`` on labelled frames (IoU 0.5)."""
    tp = fp = 0
    for frame, gt in zip(frames, truth):
        [found] = cars.detect([frame])
        flags, _ = match(found, gt, np.array([0.5]))
        tp += int(flags.sum())
        fp += int((~flags).sum())
    boxes = int(sum(len(g) for g in truth))
    return {"frames": len(frames), "cars": boxes, "found": tp + fp, "true_positives": tp,
            "precision": round(tp / max(tp + fp, 1), 4), "recall": round(tp / max(boxes, 1), 4)}
