"""``scratchwatch detect``: the daemon's detection path on photos, for people and for checking a model.

It builds the same ``CarGatedDetector`` the inference stage runs (car stage, crops, damage
model, threshold from config or model, NMS), with the ``photo`` gate by default: a close-up in
which no vehicle is found is looked at whole. Boxes are reported in the original image's pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAR_COLOUR = (255, 128, 0)  # BGR blue-ish: cars
DAMAGE_COLOUR = (0, 255, 255)  # BGR yellow: damage, as in the incident snapshots


class DetectInputError(ValueError):
    """A path that is neither an image nor a directory holding images."""


def register(sub: argparse._SubParsersAction) -> None:
    detect = sub.add_parser("detect", help="find damage in photos (the daemon's detection path; photo gate)")
    detect.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or directories (recursive)")
    detect.add_argument("--json", action="store_true", help="one JSON array on stdout")
    detect.add_argument("--conf", type=float, help="damage threshold (default: detector.conf_threshold, else the model's own)")
    detect.add_argument("--no-car-gate", action="store_true", help="look at whole images, no car stage")
    detect.add_argument("--out", type=Path, help="write annotated copies here")
    detect.set_defaults(func=cmd_detect)


def list_images(paths: list[Path]) -> list[Path]:
    """Files as given; directories expanded recursively to their images, sorted."""
    images: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DetectInputError(f"directory {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        elif path.exists():
            images.append(path)
        else:
            raise DetectInputError(f"{path} does not exist")
    return images


def detect_images(detector: Any, images: list[Path], names: dict[int, str]) -> list[dict[str, Any]]:
    """One result per image; an image that does not decode gets an ``error`` and costs only itself."""
    results = []
    for path in images:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            results.append({"image": str(path), "error": "does not decode as an image"})
            continue
        [found] = detector.detect([frame])
        results.append(_result(path, frame, found, names))
    return results


def _result(path: Path, frame: np.ndarray, found: Any, names: dict[int, str]) -> dict[str, Any]:
    height, width = frame.shape[:2]
    cars = [{"box": _box(car), "score": round(float(car[4]), 4)} for car in found.cars]
    detections = [
        {"box": _box(row), "score": round(float(row[4]), 4), "label": names.get(int(row[5]), str(int(row[5]))),
         "car": _box(row[6:10]) if row[6] >= 0 else None}
        for row in found.rows
    ]
    return {"image": str(path), "width": width, "height": height, "cars": cars, "detections": detections}


def _box(values: np.ndarray) -> list[float]:
    return [round(float(v), 1) for v in values[:4]]


def annotate(path: Path, result: dict[str, Any], out_dir: Path) -> Path:
    """A copy of the image with cars and damage drawn, named after the original."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for car in result["cars"]:
        _rectangle(image, car["box"], CAR_COLOUR, thickness, f"car {car['score']:.2f}")
    for det in result["detections"]:
        _rectangle(image, det["box"], DAMAGE_COLOUR, thickness, f"{det['label']} {det['score']:.2f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.detect.jpg"
    cv2.imwrite(str(target), image)
    return target


def _rectangle(image: np.ndarray, box: list[float], colour: tuple[int, int, int], thickness: int, label: str) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness)
    cv2.putText(image, label, (x1 + 2, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, thickness, cv2.LINE_AA)


def table(results: list[dict[str, Any]]) -> str:
    """One line per image: size, cars, damage boxes with their scores."""
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{r['image']}: ERROR {r['error']}")
            continue
        damage = ", ".join(f"{d['label']} {d['score']:.2f} at {[int(v) for v in d['box']]}" for d in r["detections"]) or "no damage"
        lines.append(f"{r['image']} ({r['width']}x{r['height']}): {len(r['cars'])} car(s); {damage}")
    return "\n".join(lines)


def cmd_detect(args: argparse.Namespace) -> int:
    from pipeline.car_gate import build_detector
    from pipeline.config import load_settings

    if args.conf is not None and not 0 <= args.conf <= 1:
        print(f"scratchwatch: --conf must be between 0 and 1, got {args.conf}", file=sys.stderr)
        return 2
    try:
        images = list_images(args.paths)
    except DetectInputError as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return 1
    settings = load_settings(args.config)
    try:
        detector = build_detector(settings.detector, "off" if args.no_car_gate else "photo", args.conf, data_dir=settings.data_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"scratchwatch: {exc}", file=sys.stderr)
        return 1
    results = detect_images(detector, images, detector.damage.names)
    if args.out:
        for path, result in zip(images, results):
            if "error" not in result:
                annotate(path, result, args.out)
    print(json.dumps(results) if args.json else table(results))
    return 1 if any("error" in r for r in results) else 0
