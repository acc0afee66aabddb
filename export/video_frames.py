"""Frames of clean footage as hard negatives: background images (empty labels) for training.

Why: the damage model's false alarms are painted bay lines and asphalt, which the close-up
training photos never show. Frames of lot footage with no damage teach it otherwise. Only a
stated time span of a clip is taken, so the rest of the clip stays footage the model never saw
and the false-alarm figures measured on it stay honest.
"""

from __future__ import annotations

from pathlib import Path

import cv2


def extract_frames(clip: Path, out_dir: Path, start_s: float, end_s: float, every_s: float) -> list[Path]:
    """Write one JPEG every ``every_s`` seconds of [start_s, end_s) with an empty label each."""
    capture = cv2.VideoCapture(str(clip))
    if not capture.isOpened():
        raise ValueError(f"video {clip} cannot be opened")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index, next_s = 0, start_s
    try:
        while True:
            ok, frame = capture.read()
            t = index / fps
            index += 1
            if not ok or t >= end_s:
                break
            if t + 1e-6 < next_s:
                continue
            stem = f"{clip.stem}-{t:07.2f}s"
            cv2.imwrite(str(out_dir / "images" / f"{stem}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            (out_dir / "labels" / f"{stem}.txt").write_text("")
            written.append(out_dir / "images" / f"{stem}.jpg")
            next_s += every_s
    finally:
        capture.release()
    return written
