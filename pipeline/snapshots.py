"""JPEG evidence of an incident: the annotated full frame and a full-resolution crop.

Files are written atomically (temporary file in the same folder, then ``os.replace``) so a
reader never sees half a JPEG, even if the daemon is killed while writing.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import SnapshotsConfig
from pipeline.geometry import margin_window

BOX_COLOUR = (0, 255, 255)  # BGR yellow: visible on red scratches and on most car paints
TEXT_COLOUR = (0, 0, 0)


CAR_MARGIN = 0.05
"""Margin of the whole-car snapshot around the car box."""


@dataclass(frozen=True)
class SnapshotPaths:
    frame: Path
    crop: Path
    car: Path


def snapshot_paths(root: Path, camera: str, when: datetime, uid: str) -> SnapshotPaths:
    """``<root>/<camera>/<YYYY-MM-DD>/<uid>_{frame,crop,car}.jpg`` (camera made filename-safe)."""
    folder = root / safe_name(camera) / when.strftime("%Y-%m-%d")
    return SnapshotPaths(folder / f"{uid}_frame.jpg", folder / f"{uid}_crop.jpg", folder / f"{uid}_car.jpg")


def write_snapshots(
    image: np.ndarray, box: np.ndarray, label: str, paths: SnapshotPaths, config: SnapshotsConfig,
    car: np.ndarray | None = None,
) -> SnapshotPaths:
    """Write the JPEGs for one detection (``box`` and ``car`` are x1 y1 x2 y2 in frame pixels).

    With a car, a third JPEG shows the whole car with the damage box drawn on it.
    """
    annotated = annotate(image, box, label)
    write_jpeg(paths.frame, annotated, config.jpeg_quality)
    write_jpeg(paths.crop, crop(image, box, config.margin), config.jpeg_quality)
    if car is not None:
        write_jpeg(paths.car, crop(annotated, car, CAR_MARGIN), config.jpeg_quality)
    return paths


def annotate(image: np.ndarray, box: np.ndarray, label: str) -> np.ndarray:
    """A copy of the frame with the box and ``label`` drawn (Hershey font: nothing to download)."""
    out = np.array(image, copy=True)
    x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
    thickness = max(1, round(max(out.shape[:2]) / 400))
    cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
    scale = 0.4 * thickness
    (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    ty = y1 - 2 if y1 - th - baseline - 2 >= 0 else y2 + th + baseline + 2
    cv2.rectangle(out, (x1, ty - th - baseline), (x1 + tw + 2, ty + baseline // 2), BOX_COLOUR, -1)
    cv2.putText(out, label, (x1 + 1, ty - baseline // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOUR, thickness, cv2.LINE_AA)
    return out


def crop(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The box plus ``margin`` x its size on each side, clipped to the frame, at full resolution."""
    left, top, right, bottom = margin_window(box, margin, image.shape[1], image.shape[0])
    return image[top:bottom, left:right]


FILE_MODE = 0o640
DIR_MODE = 0o750
"""Group-readable: a web server in the service's group can serve snapshots; others cannot."""


def write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    """Encode, then write to a temporary file beside ``path`` and rename it into place."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"snapshot {path}: JPEG encoding failed")
    for folder in reversed([p for p in (path.parent, *path.parent.parents) if not p.exists()]):
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)  # the encoded buffer as is: no extra copy
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_name(name: str) -> str:
    """A camera id as a single path component (``replay:clip`` -> ``replay_clip``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "_"
