"""Pipeline throughput against the bare model, and capture-to-row latency.

    .venv/bin/python bench/bench_replay.py throughput [--clip CLIP] [--model ONNX] [--threads N]
    .venv/bin/python bench/bench_replay.py latency [--seconds 30]

``throughput`` replays a clip through the real pipeline (spawned stages, ZeroMQ, SQL) with
every frame analysed, then, in the same run, times ONNX Runtime alone on the same frames,
already preprocessed, at batch 1 and at the pipeline's batch size. It prints JSON with
``end_to_end_fps``, ``raw_model_fps`` and their ``ratio`` (target >= 0.85 with the shipped model on 2 cores).

``latency`` runs a generated clip in real time as a camera would deliver it, with the synthetic
red-mark model from the tests so incidents happen, and reports the p50/p95/max of
``recorded_at - captured_at`` over the incident rows (target p95 <= 250 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.pipeline.synthetic` for the latency probe

from app.bench import bench_settings as settings_for, decode_frames, interleaved_raw_fps, raw_fps, steady_fps  # noqa: E402,F401
from pipeline.config import DEFAULT_MODEL, Settings, load_settings  # noqa: E402
from pipeline.detector import Detector  # noqa: E402
from pipeline.runner import Supervisor, replay_files  # noqa: E402
from pipeline.capture import SourceSpec  # noqa: E402

DEFAULT_CLIP = REPO.parent / "shared/videos/udacity_lanelines_solidWhiteRight.mp4"
SHIPPED_MODEL = REPO / DEFAULT_MODEL


def bench_settings(data_dir: Path, model: Path, threads: int | None, max_batch: int, **detector: Any) -> Settings:
    """The repository's config.yaml measuring ``model`` (see ``app.bench.bench_settings``)."""
    return settings_for(load_settings(REPO / "config.yaml"), data_dir, model, threads, max_batch, **detector)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    if not args.model.is_file():
        sys.exit(f"model {args.model} not found: train/export it (scratchwatch export) or pass --model")
    if not args.clip.is_file():
        sys.exit(f"clip {args.clip} not found (../shared/videos is not part of the repository): pass --clip")
    runs: list[float] = []
    for _ in range(args.runs):  # a clip of a few seconds: one replay is noisy, the median is not
        with tempfile.TemporaryDirectory(prefix="scratchwatch-bench-") as tmp:
            settings = bench_settings(Path(tmp), args.model, args.threads, args.max_batch, car_gate="off")
            report = replay_files(settings, [args.clip], progress=False)
        if not report.ok:
            sys.exit(f"replay failed: {report}")
        runs.append(steady_fps(report))
    detector = Detector(args.model, provider="cpu", threads=args.threads)
    frames = decode_frames(args.clip, report.frames)
    raw1 = raw_fps(detector, frames, 1, args.repeats)
    raw_batch = raw_fps(detector, frames, args.max_batch, args.repeats) if args.max_batch > 1 else raw1
    e2e = float(np.median(runs))
    return {
        "clip": str(args.clip),
        "model": str(args.model),
        "imgsz": list(detector.imgsz),
        "frames": report.frames,
        "frame_shape": list(frames[0].shape),
        "ort_threads": args.threads,
        "max_batch": args.max_batch,
        "cpu_count": os.cpu_count(),
        "end_to_end_fps": round(e2e, 1),
        "end_to_end_fps_runs": [round(r, 1) for r in runs],
        "end_to_end_fps_with_startup": round(report.fps, 1),
        "raw_model_fps": round(raw1, 1),
        f"raw_model_fps_batch{args.max_batch}": round(raw_batch, 1),
        "ratio": round(e2e / raw1, 3),
        "inference_batches": report.stages["inference"]["batches"],
        "incidents": report.incidents,
    }


def photo_clip(path: Path, images: list[Path], fps: int, size: tuple[int, int], hold_s: float, gap_s: float) -> Path:
    """A clip that shows each photo (letterboxed) for ``hold_s``, then ``gap_s`` of grey: a camera
    watching damaged cars drive by, so the real model has something to open incidents on."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    grey = np.full((size[1], size[0], 3), 114, np.uint8)
    for image_path in images:
        image = cv2.imread(str(image_path))
        if image is None:
            continue
        scale = min(size[0] / image.shape[1], size[1] / image.shape[0])
        resized = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)))
        frame = grey.copy()
        y, x = (size[1] - resized.shape[0]) // 2, (size[0] - resized.shape[1]) // 2
        frame[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
        for _ in range(int(hold_s * fps)):
            writer.write(frame)
        for _ in range(int(gap_s * fps)):
            writer.write(grey)
    writer.release()
    return path


def latency(args: argparse.Namespace) -> dict[str, Any]:
    from storage.db import connect
    from storage.repository import IncidentRepository
    from tests.pipeline.synthetic import Mark, build_red_model, write_clip

    fps, period = 25, 16  # a mark visible 8 frames, then 8 frames without: one incident per period
    with tempfile.TemporaryDirectory(prefix="scratchwatch-latency-") as tmp:
        root = Path(tmp)
        if args.images:  # the real model on real photos
            images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            images = images[: int(args.seconds / 1.5)]
            clip = photo_clip(root / "photos.mp4", images, fps, (1280, 720), hold_s=1.0, gap_s=0.5)
            model, expected, what = args.model, None, f"{args.model.name} on {len(images)} photos from {args.images}"
        else:
            count = int(args.seconds * fps / period)
            marks = [Mark(i * period, i * period + 8, (100 + 37 * (i % 20), 300 + 11 * (i % 7), 40, 14)) for i in range(count)]
            clip = write_clip(root / "lot.mp4", count * period + 10, marks, fps=fps, size=(1280, 720))
            model, expected = build_red_model(root / "red.onnx", imgsz=320), count
            what = "synthetic red-mark ONNX model (tests/pipeline/synthetic.py), imgsz 320"
        settings = bench_settings(root / "data", model, args.threads, 4, car_gate="off")
        settings = settings.model_copy(update={"tracker": settings.tracker.model_copy(update={"min_hits": 3, "max_missed": 5})})
        spec = SourceSpec(camera="lot", source=str(clip), fps=None, realtime=True)  # a camera: real time, every frame
        report = Supervisor(settings, [spec]).run()
        engine = connect(settings.database_url)
        rows = IncidentRepository(engine).list()
        engine.dispose()
    if not rows:
        sys.exit("no incident opened: nothing to measure (try more --seconds or other --images)")
    lat_ms = np.array([(r.recorded_at - r.captured_at).total_seconds() * 1000 for r in rows])
    return {
        "clip": f"generated 1280x720 @ {fps} fps, real time, every frame analysed",
        "model": what,
        "incidents": len(rows),
        "expected_incidents": expected,
        "frames": report.frames,
        "latency_ms_p50": round(float(np.percentile(lat_ms, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(lat_ms, 95)), 1),
        "latency_ms_max": round(float(lat_ms.max()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput", help="end-to-end frames/s vs raw ONNX Runtime frames/s")
    t.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    t.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="ONNX model (its imgsz is read from the file)")
    t.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own choice)")
    t.add_argument("--max-batch", type=int, default=4)
    t.add_argument("--repeats", type=int, default=3, help="raw timing: best of N passes")
    t.add_argument("--runs", type=int, default=5, help="end-to-end: median of N replays")
    l = sub.add_parser("latency", help="p95 capture -> incident row latency in real time")
    l.add_argument("--seconds", type=float, default=30.0)
    l.add_argument("--threads", type=int, default=None)
    l.add_argument("--images", type=Path, help="real photos to show (e.g. datasets/scratch-v1/images/test): "
                   "measures the real --model instead of the synthetic one")
    l.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="with --images: the ONNX model")
    args = parser.parse_args()
    result = throughput(args) if args.mode == "throughput" else latency(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
