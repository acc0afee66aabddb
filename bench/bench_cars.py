"""The car stage: how well it finds cars, and what the car-gated path costs on the lot clip.

    .venv/bin/python bench/bench_cars.py accuracy   # P/R of the car stage on the labelled frames (bench/data/*.json)
    .venv/bin/python bench/bench_cars.py speed      # replay of the lot clip, car stage on, scheduler on vs off

``speed`` replays ``demo/intel_car-detection.mp4`` through the real pipeline (spawned stages,
ZeroMQ, SQLite) with every frame analysed, the shipped models and the strict gate, once with the
inspection scheduler (``inspect_every_s`` from config.yaml) and once without (every car every
frame); "with scheduler" is config.yaml's camera policy (still frames skip the car stage, moving cars
are inspected once at rest), "with scheduler every frame" the policy before it (car stage on every
frame, a moving car inspected on every frame it moves); and, in the same run, times each model alone on the clip's frames: car-stage ms per frame
and damage-model ms per crop. Target: >= 25 analysed frames/s end to end on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_replay import bench_settings, decode_frames, steady_fps  # noqa: E402
from export.car_eval import car_stage_accuracy, labelled_frames  # noqa: E402
from pipeline.car_gate import build_detector  # noqa: E402
from pipeline.cars import CarDetector  # noqa: E402
from pipeline.config import DEFAULT_MODEL, CarStageConfig, load_settings  # noqa: E402
from pipeline.geometry import box_iou, margin_window  # noqa: E402
from pipeline.messages import FrameHeader  # noqa: E402
from pipeline.runner import replay_files  # noqa: E402

LOT_CLIP = REPO / "demo" / "intel_car-detection.mp4"


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    config = load_settings(REPO / "config.yaml").detector.cars
    cars = CarDetector(config, provider="cpu")
    out: dict[str, Any] = {"car_model": config.model.name, "scoring": config.scoring, "conf_threshold": config.conf_threshold}
    for labels in sorted((REPO / "bench" / "data").glob("*.json")):
        frames, truth, meta = labelled_frames(labels, REPO)
        out[labels.stem] = {"clip": meta["clip"], **car_stage_accuracy(cars, frames, truth)}
    return out


def model_ms(args: argparse.Namespace) -> dict[str, float]:
    """Each model alone on the clip's frames: the car stage per frame, the damage model per car crop."""
    settings = load_settings(REPO / "config.yaml")
    detector = build_detector(settings.detector.model_copy(update={"provider": "cpu", "threads": args.threads}), "strict")
    frames = decode_frames(args.clip, 10_000)
    start = time.perf_counter()
    found = [detector.cars.detect([f])[0] for f in frames]
    car_ms = 1000 * (time.perf_counter() - start) / len(frames)
    crops = [f[y1:y2, x1:x2] for f, cars in zip(frames, found) for car in cars
             for x1, y1, x2, y2 in [margin_window(car, settings.detector.cars.margin, f.shape[1], f.shape[0])]]
    start = time.perf_counter()
    for crop in crops:
        detector.damage.detect([crop])
    damage_ms = 1000 * (time.perf_counter() - start) / max(len(crops), 1)
    return {"car_stage_ms_per_frame": round(car_ms, 2), "damage_ms_per_crop": round(damage_ms, 2),
            "cars_per_frame": round(len(crops) / len(frames), 3)}


def camera_policy(cars: CarStageConfig, still: bool, moving: str, **update: Any) -> CarStageConfig:
    """``cars`` with a camera policy: still frames skipped or not, moving cars inspected ``every_frame`` or ``at_rest``."""
    motion = cars.motion.model_copy(update={"enabled": still})
    return cars.model_copy(update={"motion": motion, "inspect_moving": moving, **update})


def still_agreement(args: argparse.Namespace, conf: float = 0.05) -> dict[str, Any]:
    """What skipping still frames changes: the clip frame by frame through the camera detection path
    (scheduler on, moving cars inspected on every frame) with still frames analysed and skipped, at a low damage threshold so there are
    rows to compare; per frame, the share of the boxes of the full run that the skipping run has
    (IoU >= 0.5), for cars and for damage."""
    settings = load_settings(REPO / "config.yaml")
    frames = decode_frames(args.clip, 10_000)
    fps = cv2.VideoCapture(str(args.clip)).get(cv2.CAP_PROP_FPS) or 25.0
    headers = [FrameHeader(camera="lot", kind="replay", source=args.clip.name, seq=i, captured_ns=0, media_time_s=i / fps,
                           shape=frame.shape) for i, frame in enumerate(frames)]
    runs = {}
    for still in (False, True):
        cars = camera_policy(settings.detector.cars, still, "every_frame")
        config = settings.detector.model_copy(update={"provider": "cpu", "threads": args.threads, "cars": cars})
        detector = build_detector(config, "strict", conf)
        runs[still] = [detector.detect([frame], [header])[0] for frame, header in zip(frames, headers)]

    def found(full: list[np.ndarray], skipping: list[np.ndarray]) -> dict[str, Any]:
        total = sum(len(f) for f in full)
        kept = sum(int((box_iou(f[:, :4], s[:, :4]).max(axis=1) >= 0.5).sum()) if len(f) and len(s) else 0
                   for f, s in zip(full, skipping))
        return {"boxes_full_run": total, "found_by_skipping_run": kept, "share": round(kept / total, 4) if total else None}

    return {"frames": len(frames), "damage_conf": conf,
            "car_stage_runs": {"full": sum(r.car_inferences for r in runs[False]), "skipping": sum(r.car_inferences for r in runs[True])},
            "damage_inferences": {"full": sum(r.inferences for r in runs[False]), "skipping": sum(r.inferences for r in runs[True])},
            "cars": found([r.cars for r in runs[False]], [r.cars for r in runs[True]]),
            "damage": found([r.rows for r in runs[False]], [r.rows for r in runs[True]])}


def replay(args: argparse.Namespace, inspect_every_s: float, still: bool = True, moving: str = "at_rest") -> dict[str, Any]:
    runs, stats = [], {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="scratchwatch-bench-") as tmp:
            settings = bench_settings(Path(tmp), REPO / DEFAULT_MODEL, args.threads, 4, car_gate="strict")
            cars = camera_policy(settings.detector.cars, still, moving, inspect_every_s=inspect_every_s)
            settings = settings.model_copy(update={"detector": settings.detector.model_copy(update={"cars": cars})})
            report = replay_files(settings, [args.clip], progress=False)
        if not report.ok:
            sys.exit(f"replay failed: {report}")
        runs.append(steady_fps(report))
        stats = report.stages["inference"]
    frames = max(stats["frames"], 1)
    return {"inspect_every_s": inspect_every_s, "still_frames_skipped": still, "inspect_moving": moving, "end_to_end_fps_median": round(statistics.median(runs), 1),
            "runs": [round(r, 1) for r in runs], "frames": stats["frames"],
            "cars_per_frame": round(stats["cars"] / frames, 3),
            "damage_inferences_per_frame": round(stats["damage_inferences"] / frames, 3),
            "car_inferences_per_frame": round(stats["car_inferences"] / frames, 3),
            "incidents": sum(f.incidents for f in report.files)}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    every = load_settings(REPO / "config.yaml").detector.cars.inspect_every_s
    return {"clip": str(args.clip.relative_to(REPO) if args.clip.is_relative_to(REPO) else args.clip),
            "models_alone": model_ms(args), "with_scheduler": replay(args, every),
            "with_scheduler_every_frame": replay(args, every, still=False, moving="every_frame"),
            "without_scheduler": replay(args, 0.0, still=False, moving="every_frame"), "still_frames_agreement": still_agreement(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("accuracy", "speed"))
    parser.add_argument("--clip", type=Path, default=LOT_CLIP)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = accuracy(args) if args.mode == "accuracy" else speed(args)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"cars_{args.mode}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
