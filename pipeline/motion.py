"""Still frames skip the car stage: a car cannot appear, leave or move without the picture changing.

On a parking-lot camera most analysed frames show the same parked cars as the frame before, yet the
car stage (a YOLOv5n pass over the whole frame) is the largest fixed cost per frame. Like Frigate,
which runs its object detector only where its motion detector saw change, each camera keeps a
small blurred colour thumbnail of the frame its car boxes came from; a later frame whose thumbnail
differs from it in fewer than ``min_share`` of its pixels (by more than ``pixel_threshold`` levels
in any of the three channels: a grey difference would miss a red mark on a car of the same
brightness) reuses those boxes instead of running the model. The comparison is with that reference
frame, not with the previous frame, so change that creeps in slowly (a car inching out of its bay)
adds up until it triggers the car stage. ``refresh_s`` bounds how long boxes are reused at all.

The check costs an area resize of the frame to ``THUMB_WIDTH`` pixels and a difference of two
thumbnails (well under a millisecond at 720p), against ~12 ms for the car stage on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import MotionConfig

THUMB_WIDTH = 160
"""Thumbnail width in pixels: a car at the size prior (4 % of the frame) is still ~6 pixels wide."""


@dataclass
class _Reference:
    thumb: np.ndarray
    at: float
    cars: np.ndarray | None = None


class StillFrames:
    """Per camera: does this frame need the car stage, or do the reference frame's cars still stand?"""

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self.references: dict[str, _Reference] = {}

    def needs_cars(self, camera: str, thumb: np.ndarray, now: float) -> bool:
        """True when the car stage must run on the frame of ``thumb`` (its :func:`thumbnail`); it then becomes the camera's reference.

        It must run on a camera's first frame, once the reference is ``refresh_s`` old (or the
        source's clock went back: a looped file), and whenever the picture changed since the
        reference."""
        reference = self.references.get(camera)
        if reference is not None and not self._stale(reference, now) \
                and changed_share(reference.thumb, thumb, self.config.pixel_threshold) < self.config.min_share:
            return False
        self.references[camera] = _Reference(thumb, now)
        return True

    def forget(self, cameras: set[str]) -> None:
        """The car stage failed on these cameras' references: their next frames run it again."""
        for camera in cameras:
            self.references.pop(camera, None)

    def store(self, camera: str, cars: np.ndarray) -> None:
        """The car stage's boxes for the camera's reference frame."""
        self.references[camera].cars = cars

    def cars(self, camera: str) -> np.ndarray:
        """The reference frame's car boxes, standing for a still frame."""
        return self.references[camera].cars

    def _stale(self, reference: _Reference, now: float) -> bool:
        return stale(now - reference.at, self.config.refresh_s)

    def region_changed(self, before: np.ndarray, after: np.ndarray, box: np.ndarray, frame_width: int) -> bool:
        """Whether the part of two thumbnails under ``box`` (frame pixels) changed: a parked car whose
        pixels did not change since its last inspection would get the same answer again."""
        scale = after.shape[1] / frame_width
        x1, y1 = (max(0, int(v * scale)) for v in box[:2])
        x2, y2 = (int(np.ceil(v * scale)) + 1 for v in box[2:4])
        return changed_share(before[y1:y2, x1:x2], after[y1:y2, x1:x2], self.config.pixel_threshold) >= self.config.min_share


def stale(age_s: float, refresh_s: float) -> bool:
    """Reused results expire after ``refresh_s``, or at once when the source's clock went back (a looped file)."""
    return age_s < 0 or age_s >= refresh_s


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small blurred copy: the blur keeps sensor noise and compression blocks from counting as change."""
    height, width = frame.shape[:2]
    size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
    return cv2.GaussianBlur(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), (5, 5), 0)


def changed_share(reference: np.ndarray, thumb: np.ndarray, pixel_threshold: int) -> float:
    """Share of thumbnail pixels where any channel moved more than ``pixel_threshold``; 1.0 if the size changed."""
    if reference.shape != thumb.shape or not thumb.size:
        return 1.0
    difference = cv2.absdiff(reference, thumb)
    if difference.ndim == 3:
        difference = difference.max(axis=2)
    return float(np.count_nonzero(difference > pixel_threshold)) / difference.size
