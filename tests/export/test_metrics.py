"""Metrics against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pathlib import Path

from export.dataset import source_of
from export.metrics import ImageResult, average_precision, evaluate, map_by_group, match


def test_match_takes_highest_score_first_and_each_truth_once() -> None:
    gt = np.array([[0, 0, 10, 10]], dtype=float)
    dets = np.array([[0, 0, 10, 10, 0.6], [0, 0, 10, 9, 0.9]], dtype=float)  # IoU 0.9 for the second
    tp, matched = match(dets, gt, np.array([0.5, 0.95]))
    # the 0.9 detection is taken first and wins the truth at 0.5; at 0.95 its IoU (0.9) fails,
    # so the exact 0.6 detection takes it
    assert tp.tolist() == [[False, True], [True, False]]
    assert matched.tolist() == [[-1, 0], [0, -1]]


def test_average_precision_hand_computed() -> None:
    # 2 truths; detections by falling score: TP, FP, TP -> precision 1, .5, .667; recall .5, .5, 1
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    # envelope: 1 for recall points 0..0.5 (51 points), 2/3 for 0.51..1 (50 points)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert average_precision(recall, precision) == pytest.approx(expected)


def test_evaluate_hand_computed_case() -> None:
    area = 100.0 * 100.0
    results = [
        ImageResult(  # one truth, found at 0.9; a false alarm at 0.8
            np.array([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.8]], float), np.array([[0, 0, 10, 10]], float), area
        ),
        ImageResult(  # one large truth, found at 0.7
            np.array([[0, 0, 60, 60, 0.7]], float), np.array([[0, 0, 60, 60]], float), area
        ),
        ImageResult(np.zeros((0, 5)), np.array([[20, 20, 30, 30]], float), area),  # missed
    ]
    ev = evaluate(results)
    assert ev.n_ground_truth == 3
    # by score: TP(.9) FP(.8) TP(.7): precision 1, .5, .667; recall 1/3, 1/3, 2/3
    expected_ap = (34 * 1.0 + 33 * (2 / 3)) / 101
    assert ev.map50 == pytest.approx(expected_ap)
    assert ev.map50_95 == pytest.approx(expected_ap)  # exact boxes: the same at every IoU
    # F1: .5 at .9, .4 at .8, .667 at .7 -> best threshold .7
    assert ev.best_threshold == pytest.approx(0.7)
    assert ev.best_f1 == pytest.approx(2 / 3)
    assert ev.precision_at_best == pytest.approx(2 / 3) and ev.recall_at_best == pytest.approx(2 / 3)
    # 10x10 of 100x100 is 1% of the image -> medium (two of them, one found); 60x60 -> large
    assert ev.recall_by_size == {"medium": {"recall": 0.5, "boxes": 2}, "large": {"recall": 1.0, "boxes": 1}}


def test_evaluate_with_no_detections_is_zero() -> None:
    ev = evaluate([ImageResult(np.zeros((0, 5)), np.array([[0, 0, 5, 5]], float), 100.0)])
    assert ev.map50 == 0.0 and ev.best_f1 == 0.0


def test_map_by_group_scores_each_source_alone() -> None:
    found = ImageResult(np.array([[0, 0, 10, 10, 0.9]], float), np.array([[0, 0, 10, 10]], float), 1e4)
    missed = ImageResult(np.array([[50, 50, 60, 60, 0.95]], float), np.array([[0, 0, 10, 10]], float), 1e4)
    names = ["seed__a.jpg", "lensor__b.rf.1.jpg", "seed__c__0badf00d.jpg"]
    groups = [source_of(Path("images/test") / n) for n in names]
    assert groups == ["seed", "lensor", "seed"]
    by = map_by_group([found, missed, found], groups)
    assert by == {"lensor": {"images": 1, "boxes": 1, "mAP50": 0.0, "mAP50-95": 0.0},
                  "seed": {"images": 2, "boxes": 2, "mAP50": 1.0, "mAP50-95": 1.0}}
    # mixed together, the confident miss ranks first: the whole is worse than the better part
    assert 0 < evaluate([found, missed, found]).map50 < 1.0
