"""Training data shown the way the detector shows it: car crops, and a compact copy for a lent GPU.

``add_car_crops`` runs the pipeline's own car stage and photo gate over a built dataset's photos
and adds, beside each photo, the windows the damage model would be shown for it (the car plus
margin, never magnified), with the labels cut to the window. A close-up photo is looked at whole
by the gate, so it adds nothing; a whole-car photo or a lot frame adds its cars. The other splits
are linked unchanged, so validation and test scores stay comparable with the source dataset.

``compact_copy`` re-encodes a dataset as WebP at a bounded size, so the training photos fit the
64 MiB that travels to a lent GPU machine per call; labels are normalised, so they carry over.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from export.boxes import xywhn_to_xyxy, xyxy_to_xywhn
from export.dataset import DatasetError, load_split, tile_boxes, write_data_yaml, write_label
from pipeline.geometry import box_iou

SPLITS = ("train", "val", "test")
SAME_WINDOW_IOU = 0.8
"""A window overlapping the whole photo or an earlier window this much adds nothing new."""


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links (copies across file systems) of a dataset folder, so the source stays untouched."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)


def _new_windows(windows: list[tuple[int, int, int, int]], width: int, height: int) -> list[tuple[int, int, int, int]]:
    kept: list[tuple[int, int, int, int]] = []
    seen = np.array([[0, 0, width, height]], np.float64)
    for window in windows:
        if box_iou(np.array(window, np.float64), seen).max() < SAME_WINDOW_IOU:
            kept.append(window)
            seen = np.vstack([seen, window])
    return kept


def add_car_crops(src: Path, out: Path, gated, split: str = "train", progress: bool = True) -> dict:
    """Write ``out`` = ``src`` plus the gate's car crops of ``split``; returns counts (also ``out/crops.json``)."""
    from rich.progress import track

    if out.resolve() == src.resolve():
        raise DatasetError(f"{out}: write the crops into a new dataset folder, not over its source")
    _link_tree(src, out)
    counts = {"photos": 0, "photos_cropped": 0, "crops": 0, "crop_boxes": 0, "boxes_dropped": 0}
    for image_path, boxes in track(load_split(src, split), description="car crops", disable=not progress):
        counts["photos"] += 1
        image = cv2.imread(str(image_path))
        if image is None:
            continue
        height, width = image.shape[:2]
        windows = _new_windows(gated.windows(image), width, height)
        counts["photos_cropped"] += bool(windows)
        xyxy = xywhn_to_xyxy(boxes, width, height)
        for k, window in enumerate(windows):
            x0, y0, x1, y1 = window
            kept = tile_boxes(xyxy, window, min_visible=0.4, min_side=3.0)
            stem = f"{image_path.stem}__car{k}"
            cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), image[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            write_label(out / "labels" / split / f"{stem}.txt", xyxy_to_xywhn(kept, x1 - x0, y1 - y0))
            counts["crops"] += 1
            counts["crop_boxes"] += len(kept)
            inside = (xyxy[:, 0] < x1) & (xyxy[:, 2] > x0) & (xyxy[:, 1] < y1) & (xyxy[:, 3] > y0)
            counts["boxes_dropped"] += int(inside.sum()) - len(kept)
    write_data_yaml(out, [s for s in SPLITS if (out / "images" / s).is_dir()])
    (out / "crops.json").write_text(json.dumps({"source": str(src), "split": split} | counts, indent=2))
    return counts


def compact_copy(src: Path, out: Path, max_side: int = 960, quality: int = 78, splits=("train", "val"), progress: bool = True) -> dict:
    """``src``'s ``splits`` as WebP no larger than ``max_side``; returns image count and bytes written."""
    from rich.progress import track

    written = {"images": 0, "bytes": 0}
    for split in splits:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for image_path, _ in track(load_split(src, split), description=f"compact {split}", disable=not progress):
            image = cv2.imread(str(image_path))
            if image is None:
                continue
            scale = max_side / max(image.shape[:2])
            if scale < 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            target = out / "images" / split / f"{image_path.stem}.webp"
            cv2.imwrite(str(target), image, [cv2.IMWRITE_WEBP_QUALITY, quality])
            label = src / "labels" / split / f"{image_path.stem}.txt"
            if label.exists():
                shutil.copyfile(label, out / "labels" / split / label.name)
            written["images"] += 1
            written["bytes"] += target.stat().st_size
    write_data_yaml(out, splits)
    return written
