"""The car stage: find the vehicles in a frame, so damage is looked for on cars, not on asphalt.

The model is COCO YOLOv5n with its classic anchor-based head (``export/car_model.py``). Its
class scores fail on overhead lot views (a car seen from above is a "cell phone" or a
"suitcase" to COCO), while its objectness finds those cars well; so by default a car is any
object box, class-agnostic, that is not a person and not smaller than a size prior.
``scoring: class`` uses the best vehicle class instead (street-level cameras, or a model
without objectness).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import CarStageConfig
from pipeline.detector import Detector, ModelMismatchError, decode_batch, suppress

VEHICLE_CLASSES = ("car", "truck", "bus", "motorcycle")
NOT_VEHICLES = ("person",)
CAR_COLUMNS = 5
"""x1 y1 x2 y2 score, frame pixels."""


class CarModelError(ValueError):
    """The car model's output matches neither YOLO head, or it cannot score vehicles."""


class CarDetector:
    """A vehicle detector on ONNX Runtime that returns (K, 5) car boxes per frame."""

    def __init__(self, config: CarStageConfig, provider: str = "auto", threads: int | None = None, **runtime: Any) -> None:
        """``runtime``: the GPU path's keyword options of :class:`Detector` (workers, io_binding, max_batch, cache_dir)."""
        self.config = config
        self.detector = Detector(config.model, provider, config.conf_threshold, config.iou_threshold, threads, **runtime)
        names = self.detector.names
        self.vehicle_ids = np.array([i for i, name in names.items() if name in VEHICLE_CLASSES], dtype=np.int64)
        self.excluded_ids = np.array([i for i, name in names.items() if name in NOT_VEHICLES], dtype=np.int64)
        try:
            self.classic = self.detector.head_layout() == "classic"
        except ModelMismatchError as exc:
            raise CarModelError(str(exc).replace("detector model", "car model", 1)) from None
        if config.scoring == "objectness" and not self.classic:
            raise CarModelError(f"car model {config.model}: scoring 'objectness' needs the classic head [B, N, 5+nc]; use scoring: class")
        if config.scoring == "class" and not len(self.vehicle_ids):
            raise CarModelError(f"car model {config.model}: no class named {' / '.join(VEHICLE_CLASSES)} in its metadata")

    @property
    def name(self) -> str:
        return self.detector.name

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame an (K, 5) float32 array of car boxes: x1 y1 x2 y2 score, frame pixels."""
        if not frames:
            return []
        batch, letterboxes = self.detector.preprocess(frames)
        found = self.decode(self.detector.run(batch))
        return [self._size_prior(box.to_frame(dets)[:, :CAR_COLUMNS], box.width, box.height) for box, dets in zip(letterboxes, found)]

    def decode(self, raw: np.ndarray) -> list[np.ndarray]:
        """The batch's raw output -> per image (M, 6) car boxes in network pixels after threshold and NMS.

        A classic head is filtered by objectness (column 4) first, vectorised over the batch; only
        the rows left get the class work of ``score_rows`` (the best of 80 classes for the person
        rule, or the vehicle classes). Exact: every car score is objectness, 0, or objectness x a
        class probability in [0, 1], never above the objectness. The size prior stays after NMS,
        on the few boxes kept (a small box may still suppress a larger one, as before)."""
        threshold, iou = self.config.conf_threshold, self.config.iou_threshold
        if not self.classic:
            return decode_batch(np.stack([self.score_rows(image_raw) for image_raw in raw]), threshold, iou)
        image, anchor = np.nonzero(raw[:, :, 4] >= threshold)
        rows = self.score_rows(raw[image, anchor])
        keep = rows[:, 4] >= threshold
        return suppress(rows[keep, :4], rows[keep, 4], np.zeros(int(keep.sum()), np.int64), image[keep], len(raw), iou)

    def score_rows(self, raw: np.ndarray) -> np.ndarray:
        """One image's raw output (or any of its rows, classic head) -> (N, 5) rows of cx cy w h car-score."""
        rows = raw if self.classic else raw.T
        classes = rows[:, 5:] if self.classic else rows[:, 4:]
        if self.config.scoring == "objectness":
            score = rows[:, 4].copy()
            if len(self.excluded_ids):  # a pedestrian is an object too, but never a car
                best = classes.argmax(axis=1)
                score[np.isin(best, self.excluded_ids)] = 0.0
        else:
            vehicle = classes[:, self.vehicle_ids].max(axis=1)
            score = rows[:, 4] * vehicle if self.classic else vehicle
        return np.concatenate([rows[:, :4], score[:, None]], axis=1)

    def _size_prior(self, cars: np.ndarray, width: int, height: int) -> np.ndarray:
        longer = np.maximum(cars[:, 2] - cars[:, 0], cars[:, 3] - cars[:, 1])
        return cars[longer >= self.config.min_side * max(width, height)].astype(np.float32, copy=False)


def crop_to_frame(dets: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Boxes in crop pixels -> a copy in frame pixels (the crop's offset added back)."""
    out = dets.copy()
    out[:, 0:4:2] += window[0]
    out[:, 1:4:2] += window[1]
    return out


def centres_inside(dets: np.ndarray, car: np.ndarray) -> np.ndarray:
    """Which damage boxes have their centre on the car box: the gate's rule for 'lies on a car'."""
    cx, cy = (dets[:, 0] + dets[:, 2]) / 2, (dets[:, 1] + dets[:, 3]) / 2
    return (cx >= car[0]) & (cx <= car[2]) & (cy >= car[1]) & (cy <= car[3])
