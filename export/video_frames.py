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


def cut_clip(clip: Path, out_dir: Path, start_s: float, end_s: float | None = None) -> Path:
    """The [start_s, end_s) part of a clip as its own file (mp4v): footage kept unseen by training,
    replayed by ``evaluate --clips`` to count false alarms honestly."""
    capture = cv2.VideoCapture(str(clip))
    if not capture.isOpened():
        raise ValueError(f"video {clip} cannot be opened")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{clip.stem}_from{start_s:g}s{'' if end_s is None else f'-to{end_s:g}s'}.mp4"
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    index = written = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or (end_s is not None and index / fps >= end_s):
                break
            if index / fps >= start_s:
                writer.write(frame)
                written += 1
            index += 1
    finally:
        capture.release()
        writer.release()
    if not written:
        target.unlink(missing_ok=True)
        raise ValueError(f"video {clip} has no frame from {start_s:g}s on")
    return target
