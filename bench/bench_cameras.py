"""Live cameras, side by side: the camera scheduling policies, per damage model.

    .venv/bin/python bench/bench_cameras.py [--models M ...] [--limit 8] [--seconds 30] [--clip CLIP]
        [--policies P ...] [--phases phased in-phase]

For each damage model (default: the shipped v4 ensemble and v2) and each policy, the camera sweep
of ``scratchwatch bench --cameras`` (``app.bench.camera_sweep``): the lot clip resized to 1280x720,
N paced file cameras at 5 analysed fps through ``run``'s supervisor, 1, 2, 4 ... ``--limit`` then a
bisection; a step holds when every camera gets >= 0.9 x 5 fps and
the worst camera's p95 capture -> incidents latency is <= 250 ms. Policies (``detector.cars``):

- ``every_frame``: the car stage on every frame, a moving car inspected on every frame it moved
  (``motion.enabled: false``, ``inspect_moving: every_frame``; the policy before 2026-12-03);
- ``still_frames``: still frames skip the car stage, moving cars as above;
- ``shipped``: still frames skipped and moving cars inspected once at rest (config.yaml).

``--phases phased in-phase``: camera i starts i/N of the way into the clip
(default), or every camera shows the same clip moment (each car that parks is inspected on all N
cameras at once: the worst case). Either way the cameras' frame times are spread over the period
as ``run`` spreads them (``pipeline.capture.spread_phases``).

Everything else is config.yaml (strict car gate, the inspection scheduler). Each step also reports
the car-stage and damage-model inferences per analysed frame, which is what the policies change.
Policies alternate within a model, so a neighbour's load hits each. JSON to stdout and
``bench/results/cameras.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.bench import bench_settings, camera_sweep  # noqa: E402
from bench.bench_cars import camera_policy  # noqa: E402
from pipeline.config import load_settings  # noqa: E402

LOT_CLIP = REPO / "demo" / "intel_car-detection.mp4"
MODELS = [REPO / "models" / "scratchwatch-v4-ensemble-480.onnx", REPO / "models" / "scratchwatch-v2-yolov5n-480.onnx"]


POLICIES = {"every_frame": (False, "every_frame"), "still_frames": (True, "every_frame"), "shipped": (True, "at_rest")}


def sweep(model: Path, policy: str, phased: bool, args: argparse.Namespace) -> dict[str, Any]:
    base = load_settings(REPO / "config.yaml")
    settings = bench_settings(base, base.data_dir, model, base.detector.threads, base.detector.max_batch)
    still, moving = POLICIES[policy]
    cars = camera_policy(settings.detector.cars, still, moving)
    settings = settings.model_copy(update={"detector": settings.detector.model_copy(update={"cars": cars})})
    started = time.time()
    result = camera_sweep(settings, args.clip, args.limit, 5.0, args.seconds, (1280, 720), phased)
    return {"model": model.name, "policy": policy, "still_frames_skipped": still, "inspect_moving": moving,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.time() - started, 1), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs="+", default=MODELS)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each camera step (default 30)")
    parser.add_argument("--clip", type=Path, default=LOT_CLIP)
    parser.add_argument("--phases", nargs="+", choices=["phased", "in-phase"], default=["phased"],
                        help="cameras phased through the clip (camera i starts i/N in), or all in phase")
    args = parser.parse_args()
    runs = []
    for model in args.models:
        for phase in args.phases:
            for policy in args.policies:
                runs.append(sweep(model, policy, phase == "phased", args))
                step = runs[-1]
                print(f"{model.name} {phase} {policy}: {step['cameras_held']} cameras held "
                      f"(p95 {step['p95_latency_ms']} ms)", file=sys.stderr)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    text = json.dumps({"clip": str(args.clip), "cpu_count": os.cpu_count(), "runs": runs}, indent=2)
    (out / "cameras.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
