"""Detection metrics computed from the pipeline's own detections, not ultralytics' validator.

Matching follows COCO: detections are taken in descending score, each matches the unmatched
ground-truth box of highest IoU if that IoU reaches the threshold. AP is the area under the
precision envelope with 101-point interpolation (COCO's convention), so the numbers are
comparable with ultralytics' and with published results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from export.boxes import size_class
from pipeline.geometry import box_iou

IOU_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)


@dataclass
class ImageResult:
    """One image's detections (N, 5: x1 y1 x2 y2 score) against its ground truth (M, 4)."""

    detections: np.ndarray
    ground_truth: np.ndarray
    image_area: float


def match(detections: np.ndarray, ground_truth: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS):
    """True-positive flags (N, T) per detection and threshold, and the GT index matched at each."""
    n, t = len(detections), len(thresholds)
    tp = np.zeros((n, t), dtype=bool)
    matched_gt = np.full((n, t), -1, dtype=int)
    if n == 0 or len(ground_truth) == 0:
        return tp, matched_gt
    order = np.argsort(-detections[:, 4], kind="stable")
    iou = box_iou(detections[order, :4], ground_truth)
    for k, thr in enumerate(thresholds):
        taken = np.zeros(len(ground_truth), dtype=bool)
        for row, det_index in enumerate(order):
            candidates = np.where(taken, -1.0, iou[row])
            best = int(np.argmax(candidates))
            if candidates[best] >= thr:
                taken[best] = True
                tp[det_index, k] = True
                matched_gt[det_index, k] = best
    return tp, matched_gt


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP of one precision/recall curve (sorted by falling score)."""
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean(np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0)))


@dataclass
class Evaluation:
    n_images: int
    n_ground_truth: int
    ap: dict[float, float]
    scores: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)  # at IoU 0.5, by falling score
    recall: np.ndarray = field(repr=False)
    best_threshold: float = 0.0
    best_f1: float = 0.0
    precision_at_best: float = 0.0
    recall_at_best: float = 0.0
    recall_by_size: dict[str, dict] = field(default_factory=dict)
    by_source: dict[str, dict] = field(default_factory=dict)  # mAP per input dataset, when mixed

    @property
    def map50(self) -> float:
        return self.ap[0.5]

    @property
    def map50_95(self) -> float:
        return float(np.mean(list(self.ap.values())))

    def as_dict(self) -> dict:
        return {
            "images": self.n_images,
            "ground_truth_boxes": self.n_ground_truth,
            "precision": round(self.precision_at_best, 4),
            "recall": round(self.recall_at_best, 4),
            "f1": round(self.best_f1, 4),
            "threshold": round(self.best_threshold, 4),
            "mAP50": round(self.map50, 4),
            "mAP50-95": round(self.map50_95, 4),
            "recall_by_size": self.recall_by_size,
        } | ({"by_source": self.by_source} if self.by_source else {})


def evaluate(results: list[ImageResult]) -> Evaluation:
    """Precision, recall, AP at 0.5:0.95, the F1-best threshold and recall by box size."""
    n_gt = int(sum(len(r.ground_truth) for r in results))
    flags, scores = [], []
    for r in results:
        tp, _ = match(r.detections, r.ground_truth)
        flags.append(tp)
        scores.append(r.detections[:, 4] if len(r.detections) else np.zeros(0))
    tp_all = np.concatenate(flags) if flags else np.zeros((0, len(IOU_THRESHOLDS)), bool)
    score_all = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-score_all, kind="stable")
    tp_all, score_all = tp_all[order], score_all[order]
    cum_tp = np.cumsum(tp_all, axis=0)
    denom = np.arange(1, len(score_all) + 1)[:, None]
    precision = cum_tp / np.maximum(denom, 1)
    recall = cum_tp / max(n_gt, 1)
    ap = {float(t): average_precision(recall[:, k], precision[:, k]) for k, t in enumerate(IOU_THRESHOLDS)}
    ev = Evaluation(len(results), n_gt, ap, score_all, precision[:, 0], recall[:, 0])
    _pick_threshold(ev)
    ev.recall_by_size = recall_by_size(results, ev.best_threshold)
    return ev


def _pick_threshold(ev: Evaluation) -> None:
    if len(ev.scores) == 0:
        return
    f1 = 2 * ev.precision * ev.recall / np.maximum(ev.precision + ev.recall, 1e-12)
    best = int(np.argmax(f1))
    ev.best_f1, ev.best_threshold = float(f1[best]), float(ev.scores[best])
    ev.precision_at_best, ev.recall_at_best = float(ev.precision[best]), float(ev.recall[best])


def recall_by_size(results: list[ImageResult], threshold: float, iou: float = 0.5) -> dict[str, dict]:
    """Recall at IoU 0.5 for small / medium / large ground-truth boxes, at the given score threshold."""
    found: dict[str, list[int]] = {}
    for r in results:
        kept = r.detections[r.detections[:, 4] >= threshold] if len(r.detections) else r.detections
        _, matched = match(kept, r.ground_truth, np.array([iou]))
        hit = set(matched[:, 0][matched[:, 0] >= 0].tolist())
        for j, (x1, y1, x2, y2) in enumerate(r.ground_truth):
            bucket = found.setdefault(size_class((x2 - x1) * (y2 - y1) / r.image_area), [0, 0])
            bucket[0] += j in hit
            bucket[1] += 1
    return {k: {"recall": round(v[0] / v[1], 4), "boxes": v[1]} for k, v in sorted(found.items())}


def map_by_group(results: list[ImageResult], groups: list[str]) -> dict[str, dict]:
    """mAP of each group of images on its own (e.g. per input dataset), where one mix hides a weak part."""
    by: dict[str, list[ImageResult]] = {}
    for result, group in zip(results, groups, strict=True):
        by.setdefault(group, []).append(result)
    out = {}
    for group, members in sorted(by.items()):
        ev = evaluate(members)
        out[group] = {"images": ev.n_images, "boxes": ev.n_ground_truth,
                      "mAP50": round(ev.map50, 4), "mAP50-95": round(ev.map50_95, 4)}
    return out
