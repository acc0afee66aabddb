"""Cross-camera batching on vs off: N paced 720p cameras through `run`'s supervisor, modes interleaved.

    .venv/bin/python bench/bench_batching.py [--clip CLIP] [--cameras 4 8] [--repeats 2] [--wait-ms 50]

Each camera count runs every mode once per repeat, the modes in a rotating order, so load that
other processes add hits every mode alike. Modes:

- ``off``: ``batch_frames: 1``: every frame is its own detector call;
- ``drain``: ``batch_frames: max_batch``, ``batch_wait_ms: 0``: whatever has arrived runs together
  (frames batch only when they queue behind a busy detector);
- ``wait``: ``batch_frames: max_batch``, ``batch_wait_ms: --wait-ms``: frames are gathered until
  the batch is full or the oldest waited that long.

Cameras send spread over one frame period, as ``run`` spreads them (``spread_phases``;
``--in-phase``: all in the same instant). Per step: analysed fps per camera, p50/p95 capture -> incidents-stage
latency, frames per batch, frame copies per frame, and the CPU the capture process (decode) and
the stage processes used. Writes one JSON object (stdout, and ``--out``), with the load average
before and after every step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.bench import KEEPS_UP_P95_MS, bench_settings, camera_clip, camera_step  # noqa: E402
from pipeline.config import load_settings  # noqa: E402

DEFAULT_CLIP = REPO.parent / "shared/videos/intel_car-detection.mp4"


def modes(max_batch: int, wait_ms: float) -> dict[str, dict[str, Any]]:
    return {"off": {"batch_frames": 1, "batch_wait_ms": 0.0},
            "drain": {"batch_frames": max_batch, "batch_wait_ms": 0.0},
            "wait": {"batch_frames": max_batch, "batch_wait_ms": wait_ms}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--cameras", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--wait-ms", type=float, default=50.0)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--modes", nargs="+", default=["off", "drain", "wait"])
    parser.add_argument("--in-phase", action="store_true", help="every camera sends in the same instant")
    parser.add_argument("--detector-only", type=int, nargs="*", metavar="BATCH",
                        help="instead: frames/s of the configured detection path in-process at these batch sizes")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    base = load_settings(args.config)
    config = base.detector
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.detector_only is not None:
        return finish(detector_only(base, args.clip, size, args.detector_only or [1, 4, 8], args.repeats), args.out)
    table = modes(config.max_batch, args.wait_ms)
    result: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "clip": str(args.clip), "model": str(config.model),
        "car_gate": config.car_gate, "max_batch": config.max_batch, "camera_fps": args.fps, "camera_size": args.size,
        "seconds": args.seconds, "spread": not args.in_phase, "cpu_count": os.cpu_count(),
        "modes": {name: table[name] for name in args.modes}, "steps": [],
    }
    with tempfile.TemporaryDirectory(prefix="scratchwatch-batching-") as tmp:
        clip = camera_clip(args.clip, Path(tmp) / "camera.mp4", args.seconds, size)
        for repeat in range(args.repeats):
            for count in args.cameras:
                order = args.modes[repeat % len(args.modes):] + args.modes[: repeat % len(args.modes)]
                for name in order:
                    settings = bench_settings(base, base.data_dir, config.model, config.threads, config.max_batch,
                                              car_gate=config.car_gate, **table[name])
                    load_before = os.getloadavg()[0]
                    step = camera_step(settings, clip, count, args.fps, spread=not args.in_phase)
                    step.update(mode=name, repeat=repeat, load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
                    result["steps"].append(step)
                    print(json.dumps({k: step[k] for k in ("mode", "cameras", "min_camera_fps", "p95_latency_ms", "mean_batch",
                                                           "keeps_up", "load_before")}), file=sys.stderr)
    result["summary"] = summarise(result["steps"], args.fps)
    finish(result, args.out)


def finish(result: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


def detector_only(base: Any, clip: Path, size: tuple[int, ...], batches: list[int], repeats: int) -> dict[str, Any]:
    """The gain batching can give at all: the configured detection path (car stage, crops) on the
    clip's frames at the camera size, each batch size timed in turn, best of ``repeats`` rounds."""
    import cv2

    from app.bench import decode_frames
    from pipeline.car_gate import build_detector

    frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in decode_frames(clip, 400)[::3]]
    result: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "clip": str(clip),
                              "frames": len(frames), "size": list(size), "car_gate": base.detector.car_gate,
                              "load_before": round(os.getloadavg()[0], 2), "fps": {}}
    best: dict[int, float] = {}
    for _ in range(repeats):
        for batch in batches:  # a fresh detector each time: the scheduler's state never carries over
            detector = build_detector(base.detector.model_copy(update={"max_batch": batch, "cars": base.detector.cars.model_copy(
                update={"inspect_every_s": 0.0})}))
            start = time.perf_counter()
            for i in range(0, len(frames), batch):
                detector.detect(frames[i : i + batch])
            best[batch] = max(best.get(batch, 0.0), len(frames) / (time.perf_counter() - start))
    result["fps"] = {f"batch{b}": round(v, 1) for b, v in best.items()}
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def summarise(steps: list[dict[str, Any]], fps: float) -> dict[str, Any]:
    """Per mode and camera count: the median of the repeats, and the largest count every repeat held."""
    out: dict[str, Any] = {}
    for step in steps:
        entry = out.setdefault(step["mode"], {}).setdefault(str(step["cameras"]), {"p95_latency_ms": [], "min_camera_fps": [],
                                                                                  "mean_batch": [], "held": []})
        for key in ("p95_latency_ms", "min_camera_fps", "mean_batch"):
            entry[key].append(step[key])
        entry["held"].append(step["keeps_up"])
    for mode in out.values():
        held = [int(n) for n, entry in mode.items() if all(entry["held"])]
        mode["cameras_held"] = max(held, default=0)
    out["criteria"] = f"held: every camera >= 0.9 x {fps:g} fps and p95 <= {KEEPS_UP_P95_MS:g} ms in every repeat"
    return out


if __name__ == "__main__":
    main()
