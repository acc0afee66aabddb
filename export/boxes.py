"""Box geometry shared by dataset building, tiling and evaluation.

Boxes are float arrays of shape (N, 4). ``xyxy`` is corner form in pixels; ``xywhn`` is YOLO's
normalised centre form. Keeping the conversions in one module stops each tool from growing its
own, slightly different, rounding rules.
"""

from __future__ import annotations

import numpy as np

# Size classes by the share of the image a box covers. Source images range from 168 px to 1600 px,
# so COCO's absolute pixel thresholds would mean different things per photo; a relative area does not.
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 0.01),
    ("medium", 0.01, 0.10),
    ("large", 0.10, float("inf")),
)


def xywhn_to_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] - b[:, 2] / 2) * width
    out[:, 1] = (b[:, 1] - b[:, 3] / 2) * height
    out[:, 2] = (b[:, 0] + b[:, 2] / 2) * width
    out[:, 3] = (b[:, 1] + b[:, 3] / 2) * height
    return out


def xyxy_to_xywhn(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) / 2 / width
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2 / height
    out[:, 2] = (b[:, 2] - b[:, 0]) / width
    out[:, 3] = (b[:, 3] - b[:, 1]) / height
    return out


def size_class(area_fraction: float) -> str:
    """Name of the size bin for a box covering ``area_fraction`` of its image."""
    for name, low, high in SIZE_BINS:
        if low <= area_fraction < high:
            return name
    return SIZE_BINS[-1][0]
