"""Box geometry the tracker and the evaluation share: one IoU for the whole project."""

from __future__ import annotations

import math

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes, shape (len(a), len(b))."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def margin_window(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The frame window (x1, y1, x2, y2; integers, inside the frame, at least 1 px) around a box grown by
    ``margin`` x its size on each side: the car stage's crops and the snapshots' crops."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    left, top = min(max(0, math.floor(x1 - mx)), width - 1), min(max(0, math.floor(y1 - my)), height - 1)
    right, bottom = min(width, math.ceil(x2 + mx)), min(height, math.ceil(y2 + my))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def grow_window(window: tuple[int, int, int, int], min_w: int, min_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``window`` grown about its centre to at least min_w x min_h (at most the frame), shifted to stay inside it."""
    x1, y1, x2, y2 = window
    new_w, new_h = min(width, max(x2 - x1, min_w)), min(height, max(y2 - y1, min_h))
    left = min(max(0, (x1 + x2 - new_w) // 2), width - new_w)
    top = min(max(0, (y1 + y2 - new_h) // 2), height - new_h)
    return left, top, left + new_w, top + new_h


TILE_OVERLAP = 0.2
"""How much neighbouring tiles overlap, as a share of a tile: the dataset builder's default and the detector's."""


def tile_grid(width: int, height: int, n: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """An n x n grid of tiles (x1, y1, x2, y2) over a width x height image that overlap by ``overlap`` of a tile's size.

    Training tiles (``dataset build --tile``) and the detector's tiles (``detector.cars.tiles``) are cut
    by this one rule, so the model sees at inference the magnification it was trained on."""
    tw = width / (n - (n - 1) * overlap)
    th = height / (n - (n - 1) * overlap)
    tiles = []
    for r in range(n):
        for c in range(n):
            x0 = round(c * tw * (1 - overlap))
            y0 = round(r * th * (1 - overlap))
            tiles.append((x0, y0, min(round(x0 + tw), width), min(round(y0 + th), height)))
    return tiles
