"""``scratchwatch bench``: the pipeline against the bare model and against ultralytics' own loop.

One run, one clip, one model file, one machine, so the figures can be set side by side:

- ``raw_fps``: ONNX Runtime alone on already letterboxed frames, batch 1 and the pipeline's batch;
- ``ultralytics_fps``: ``YOLO(model.onnx).predict(source=clip, stream=True)`` at the same input
  size and thresholds (square letterbox, ``rect=False``, as the pipeline fits frames); needs the
  training extra, else reported absent;
- ``replay_fps``: ``scratchwatch replay`` of the clip, every frame analysed, whole frames
  (``car_gate: off``) and, when the config has a car stage, with it (the config's gate);
- ``detections_match``: ultralytics and the replay's detection path (``build_detector`` with the
  replay's settings, run in-process on the same decoded frames) agree box for box (2 px, 0.01);
- ``--cameras N``: 1, 2, 4 ... N copies of the clip (looped, resized, paced at their frame rate,
  camera i starting i/N of the way into the clip unless ``--cameras-in-phase``) through ``run``'s
  supervisor; per camera the analysed frames/s and the p50/p95 capture -> incidents-stage latency;
  it stops at the first count that no longer keeps up, then bisects.

Pieces are shared with ``bench/bench_replay.py`` (``decode_frames``, ``raw_fps``, ``steady_fps``,
``bench_settings``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import Settings

log = logging.getLogger(__name__)
BOX_TOLERANCE_PX = 2.0
SCORE_TOLERANCE = 0.01
MATCH_FRAMES = 40
MATCH_CONF = 0.02
"""Threshold of the detection comparison: the shipped v4 scores no box 0.1 or more in the first 40
frames of either shared clip (the comparison would be empty), 47 and 210 boxes at 0.02."""
KEEPS_UP_FPS_SHARE = 0.9
"""A camera count holds when every camera gets this share of its configured analysed fps..."""
KEEPS_UP_P95_MS = 250.0
"""...and the p95 capture -> incidents latency stays under this."""


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="frames/s: raw ONNX Runtime, ultralytics' loop, replay, N cameras (one run)")
    bench.add_argument("--clip", type=Path, required=True, help="video file every measurement uses")
    bench.add_argument("--model", type=Path, help="damage model (default: detector.model)")
    bench.add_argument("--frames", type=int, default=120, help="frames of the clip for (a) and (b) (default 120)")
    bench.add_argument("--match-conf", type=float, default=MATCH_CONF,
                       help=f"threshold of the detection comparison, low so there are boxes to compare (default {MATCH_CONF})")
    bench.add_argument("--cameras", type=int, help="try 1, 2, 4 ... N paced cameras through `run`")
    bench.add_argument("--camera-fps", type=float, default=5.0, help="analysed fps per camera (default 5)")
    bench.add_argument("--camera-seconds", type=float, default=30.0,
                       help="length of each camera step (default 30: a p95 over 150 frames per camera, not 75)")
    bench.add_argument("--camera-size", default="1280x720", help="frame size the cameras deliver, WxH (default 1280x720)")
    bench.add_argument("--cameras-in-phase", action="store_true",
                       help="every camera shows the same frame at the same time (default: camera i starts i/N into the clip)")
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bench.add_argument("--chart", type=Path, metavar="PNG", help="draw the figures (needs matplotlib)")
    bench.set_defaults(func=cmd_bench)


# ---- pieces shared with bench/bench_replay.py -------------------------------------------------

def bench_settings(base: Settings, data_dir: Path, model: Path, threads: int | None, max_batch: int, **detector: Any) -> Settings:
    """``base`` measuring ``model`` on the CPU: no configured cameras, SQLite in ``data_dir``, every frame."""
    return base.model_copy(
        update={
            "data_dir": data_dir,
            "cameras": [],
            "detector": base.detector.model_copy(
                update={"model": model, "provider": "cpu", "threads": threads, "max_batch": max_batch, **detector}
            ),
            "database": base.database.model_copy(update={"url": None}),
            "replay": base.replay.model_copy(update={"fps": None}),
        }
    )


def steady_fps(report: Any) -> float:
    """Frames per second between the first and the last analysed frame (no process start-up)."""
    stats = report.stages["incidents"]
    span_s = (stats["last_frame_ns"] - stats["first_frame_ns"]) / 1e9
    return (report.frames - 1) / span_s if span_s > 0 else 0.0


def decode_frames(clip: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def raw_fps(detector: Any, frames: list[np.ndarray], batch: int, repeats: int) -> float:
    """ONNX Runtime alone: frames preprocessed beforehand, only session runs are timed."""
    batches = [detector.preprocess(frames[i : i + batch])[0] for i in range(0, len(frames), batch)]
    detector.run(batches[0])  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in batches:
            detector.run(chunk)
        best = max(best, len(frames) / (time.perf_counter() - start))
    return best


def interleaved_raw_fps(detectors: dict[str, Any], frames: list[np.ndarray], batch: int, passes: int = 3) -> dict[str, float]:
    """``raw_fps`` of each detector, best of ``passes`` passes taken in turn, so a change in the
    machine's load hits every detector alike (model A/B comparisons in one run)."""
    best = dict.fromkeys(detectors, 0.0)
    for _ in range(passes):
        for name, detector in detectors.items():
            best[name] = max(best[name], raw_fps(detector, frames, batch, 1))
    return best


# ---- (b) ultralytics and the detection match --------------------------------------------------

def ultralytics_loop(model: Path, clip: Path, imgsz: tuple[int, int], conf: float, iou: float,
                     limit: int) -> tuple[float, list[np.ndarray]] | None:
    """Steady frames/s of ultralytics' streaming predict on the clip and its (N, 5) boxes per frame;
    None when the training extra is not installed."""
    try:  # its first import prints a settings banner to stdout, which --json keeps for the one JSON object
        with contextlib.redirect_stdout(sys.stderr):
            from export.train import offline_env

            offline_env()
            from ultralytics import YOLO
            from ultralytics.utils import LOGGER
    except ImportError:
        return None
    found, stamps = [], []
    handlers = [h for h in LOGGER.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    try:  # it logs to stdout, which --json keeps for the one JSON object (set, not setStream: no flush)
        for handler in handlers:
            handler.stream = sys.stderr
        with contextlib.redirect_stdout(sys.stderr):
            yolo = YOLO(str(model), task="detect")
            stream = yolo.predict(source=str(clip), stream=True, imgsz=list(imgsz), conf=conf, iou=iou, device="cpu",
                                  rect=False, verbose=False, batch=1)
            for result in stream:
                boxes = result.boxes
                found.append(np.concatenate([boxes.xyxy.numpy(), boxes.conf.numpy()[:, None]], axis=1).astype(np.float32))
                stamps.append(time.perf_counter())
                if len(found) == limit:
                    break
    finally:
        for handler, original in zip(handlers, streams):
            handler.stream = original
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    return ((len(stamps) - 1) / span if span > 0 else 0.0), found


def detections_match(ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict[str, Any]:
    """Frame by frame, each box matched to its nearest counterpart: within 2 px and 0.01 in score.
    ``match`` is None when neither side found a box: nothing was compared, so nothing was shown."""
    bad, worst_px, worst_score = [], 0.0, 0.0
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if len(a) != len(b):
            bad.append(index)
            continue
        if not len(a):
            continue
        a, b = a[np.argsort(-a[:, 4])], b[np.argsort(-b[:, 4])]
        dist = np.abs(a[:, None, :4] - b[None, :, :4]).max(axis=2)
        nearest = dist.argmin(axis=1)
        px, score = float(dist.min(axis=1).max()), float(np.abs(a[:, 4] - b[nearest, 4]).max())
        worst_px, worst_score = max(worst_px, px), max(worst_score, score)
        if px > BOX_TOLERANCE_PX or score > SCORE_TOLERANCE or len(set(nearest.tolist())) != len(a):
            bad.append(index)
    boxes = int(sum(len(a) for a in ours))
    agree = not bad and len(ours) == len(theirs)
    return {"match": None if agree and not boxes else agree, "frames": min(len(ours), len(theirs)),
            "boxes": boxes, "mismatched_frames": bad[:20],
            "max_box_diff_px": round(worst_px, 3), "max_score_diff": round(worst_score, 4)}


def pipeline_detections(settings: Settings, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The replay's detection path (same builder, settings and batch size), in-process."""
    from pipeline.car_gate import build_detector

    detector = build_detector(settings.detector, "off")
    batch = settings.detector.max_batch
    out: list[np.ndarray] = []
    for start in range(0, len(frames), batch):
        out.extend(r.rows[:, :5] for r in detector.detect(frames[start : start + batch]))
    return out


# ---- (c) replay and (d) cameras ----------------------------------------------------------------

def replay_fps(settings: Settings, clip: Path, gate: str) -> dict[str, Any]:
    from pipeline.runner import replay_files

    with tempfile.TemporaryDirectory(prefix="scratchwatch-bench-") as tmp:
        run = settings.model_copy(update={"data_dir": Path(tmp), "detector": settings.detector.model_copy(update={"car_gate": gate})})
        report = replay_files(run, [clip], progress=False)
    if not report.ok:
        raise RuntimeError(f"replay of {clip} with car_gate {gate} failed: {report.files[0].error or report.stages}")
    return {"fps": round(steady_fps(report), 1), "frames": report.frames, "incidents": report.incidents}


def camera_clip(clip: Path, out: Path, seconds: float, size: tuple[int, int], start_share: float = 0.0) -> Path:
    """The clip resized to ``size`` and looped to ``seconds`` (a camera that keeps delivering),
    starting ``start_share`` of the way into the clip (0.5: its middle)."""
    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(seconds * fps)
    length = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or total
    order = [(int(start_share * length) + i) % length for i in range(total)]
    wanted, frames, index = set(order), {}, 0
    while len(frames) < len(wanted):
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            frames[index] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        index += 1
    cap.release()
    if not frames:
        raise ValueError(f"clip {clip}: no frame decodes")
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for index in order:
        if index in frames:  # a container that overstates its frame count: what decodes, in order
            writer.write(frames[index])
    writer.release()
    return out


def camera_clips(clip: Path, folder: Path, count: int, seconds: float, size: tuple[int, int], phased: bool) -> list[Path]:
    """One clip per camera. ``phased``: camera i starts i/count of the way into the clip, so N
    cameras see different moments (real cameras do not see the same car park at the same instant);
    else they all show the same frames at the same time (every burst of work lands on all at once)."""
    if not phased:
        return [camera_clip(clip, folder / "camera.mp4", seconds, size)]
    return [camera_clip(clip, folder / f"camera{i}.mp4", seconds, size, i / count) for i in range(count)]


def camera_step(settings: Settings, clips: Path | list[Path], count: int, fps: float, spread: bool = True) -> dict[str, Any]:
    """``count`` paced file cameras through ``run``'s supervisor, camera i on ``clips[i]`` (cycled;
    one path: all on it). ``spread``: their frame times spread over the period as ``run`` spreads
    its cameras' (``spread_phases``); false: every camera sends in the same instant (before 2026-12-06)."""
    from pipeline.capture import SourceSpec, spread_phases
    from pipeline.runner import Supervisor

    with tempfile.TemporaryDirectory(prefix="scratchwatch-cameras-") as tmp:
        run = settings.model_copy(update={"data_dir": Path(tmp)})
        sources = [clips] if isinstance(clips, Path) else clips
        specs = [SourceSpec(camera=f"cam{i}", source=str(sources[i % len(sources)]), fps=fps, realtime=True) for i in range(count)]
        usage = CpuUse()
        report = Supervisor(run, spread_phases(specs) if spread else specs).run()
        cpu = usage.since()
    latency = report.stages.get("incidents", {}).get("latency_ms", {})
    inference = report.stages.get("inference", {})  # frames per batch: cross-camera batching as it happens
    per_camera = [latency.get(spec.camera, {}).get("fps", 0.0) for spec in specs]
    p50 = max((v["p50"] for v in latency.values()), default=float("nan"))  # the worst camera's
    p95 = max((v["p95"] for v in latency.values()), default=float("nan"))
    min_fps = min(per_camera, default=0.0)
    return {"cameras": count, "min_camera_fps": round(min_fps, 2), "mean_camera_fps": round(float(np.mean(per_camera)), 2),
            "p50_latency_ms": round(p50, 1), "p95_latency_ms": round(p95, 1),
            "keeps_up": bool(min_fps >= KEEPS_UP_FPS_SHARE * fps and p95 <= KEEPS_UP_P95_MS),
            "mean_batch": round(inference.get("frames", 0) / max(inference.get("batches", 0), 1), 2),
            "car_inferences_per_frame": round(inference.get("car_inferences", 0) / max(inference.get("frames", 0), 1), 3),
            "damage_inferences_per_frame": round(inference.get("damage_inferences", 0) / max(inference.get("frames", 0), 1), 3),
            "frame_copies": {**inference.get("frame_copies", {}), "capture": sum(f.copies for f in report.files)},
            "cpu": cpu}


class CpuUse:
    """CPU seconds from now: this process (the supervisor and its capture threads, which decode) and
    its finished children (the stage processes), against wall time: both > 0 at once is overlap."""

    def __init__(self) -> None:
        self.start = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

    def since(self) -> dict[str, float]:
        wall0, self0, children0 = self.start
        wall = time.monotonic() - wall0
        mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        capture = mine.ru_utime + mine.ru_stime - self0.ru_utime - self0.ru_stime
        stages = children.ru_utime + children.ru_stime - children0.ru_utime - children0.ru_stime
        return {"wall_s": round(wall, 1), "capture_process_cores": round(capture / wall, 2),
                "stage_processes_cores": round(stages / wall, 2), "cores_busy": round((capture + stages) / wall, 2)}


def camera_counts(limit: int) -> list[int]:
    """1, 2, 4 ... and ``limit`` itself."""
    counts, n = [], 1
    while n < limit:
        counts.append(n)
        n *= 2
    return [*counts, limit]


def largest_held(limit: int, keeps_up: Callable[[int], bool]) -> int:
    """The most cameras that keep up: 1, 2, 4 ... ``limit`` until one fails, then a bisection
    between the last count held and the first that failed (so 8 failing after 4 tries 6, then 5
    or 7); 0 when even one camera falls behind."""
    held, failed = 0, None
    for count in camera_counts(limit):
        if not keeps_up(count):
            failed = count
            break
        held = count
    while failed is not None and failed - held > 1:
        middle = (held + failed) // 2
        if keeps_up(middle):
            held = middle
        else:
            failed = middle
    return held


def camera_sweep(settings: Settings, clip: Path, limit: int, fps: float, seconds: float, size: tuple[int, int],
                 phased: bool = True) -> dict[str, Any]:
    """The largest camera count that keeps up (``largest_held``); cameras phased through the clip
    unless ``phased`` is false (``camera_clips``). Frame times are spread as ``run`` spreads them."""
    with tempfile.TemporaryDirectory(prefix="scratchwatch-camclip-") as tmp:
        clips = camera_clips(clip, Path(tmp), limit, seconds, size, phased)
        steps: dict[int, dict[str, Any]] = {}

        def keeps_up(count: int) -> bool:
            steps[count] = camera_step(settings, clips[:count] if phased else clips, count, fps)
            return steps[count]["keeps_up"]

        held = largest_held(limit, keeps_up)
    return {"cameras_held": held, "p95_latency_ms": steps[held]["p95_latency_ms"] if held else None,
            "camera_steps": [steps[n] for n in sorted(steps)], "camera_fps": fps, "camera_size": f"{size[0]}x{size[1]}",
            "cameras_phased": phased}


# ---- the command --------------------------------------------------------------------------------

def run_bench(settings: Settings, clip: Path, model: Path, frames: int, cameras: int | None = None,
              camera_fps: float = 5.0, camera_seconds: float = 30.0, camera_size: tuple[int, int] = (1280, 720),
              match_conf: float = MATCH_CONF, cameras_phased: bool = True) -> dict[str, Any]:
    from pipeline.detector import Detector

    config = settings.detector
    threads, batch = config.threads, config.max_batch
    base = bench_settings(settings, settings.data_dir, model, threads, batch)
    detector = Detector(model, provider="cpu", conf_threshold=config.conf_threshold, iou_threshold=config.iou_threshold, threads=threads)
    decoded = decode_frames(clip, frames)
    if not decoded:
        raise ValueError(f"clip {clip}: no frame decodes")
    result: dict[str, Any] = {
        "clip": str(clip), "frame_shape": list(decoded[0].shape), "model": str(model), "imgsz": list(detector.imgsz),
        "conf_threshold": detector.conf_threshold, "iou_threshold": detector.iou_threshold, "max_batch": batch,
        "ort_threads": threads, "cpu_count": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "raw_fps": {"batch1": round(raw_fps(detector, decoded, 1, 3), 1),
                    f"batch{batch}": round(raw_fps(detector, decoded, batch, 3), 1)},
    }
    loop = ultralytics_loop(model, clip, detector.imgsz, detector.conf_threshold, detector.iou_threshold, len(decoded))
    result["ultralytics_fps"] = round(loop[0], 1) if loop else None
    result["detections_match"] = None
    if loop:  # a second, short pass at a low threshold: at the operating one a clean clip has no box to compare
        count = min(len(decoded), MATCH_FRAMES)
        _, theirs = ultralytics_loop(model, clip, detector.imgsz, match_conf, detector.iou_threshold, count)
        low = base.model_copy(update={"detector": base.detector.model_copy(update={"conf_threshold": match_conf})})
        result["detections_match"] = {"conf_threshold": match_conf,
                                      **detections_match(pipeline_detections(low, decoded[:count]), theirs)}
    else:
        result["ultralytics"] = "absent: install the training extra (pip install -e '.[train]')"
    result["replay_fps"] = {"whole_frame": replay_fps(base, clip, "off")}
    if config.car_gate != "off":  # the config has a car stage
        result["replay_fps"]["car_stage"] = replay_fps(base, clip, config.car_gate)
    whole = result["replay_fps"]["whole_frame"]["fps"]
    result["ratios"] = {"replay_vs_raw_batch1": round(whole / result["raw_fps"]["batch1"], 3),
                        "replay_vs_ultralytics": round(whole / loop[0], 2) if loop and loop[0] else None}
    if cameras:
        cams = base.model_copy(update={"detector": base.detector.model_copy(update={"car_gate": config.car_gate})})
        result.update(camera_sweep(cams, clip, cameras, camera_fps, camera_seconds, camera_size, cameras_phased))
    return result


def draw_chart(result: dict[str, Any], path: Path) -> None:
    """Bars of every frames/s figure and, with cameras, latency and fps per camera count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {f"raw {k}": v for k, v in result["raw_fps"].items()}
    if result.get("ultralytics_fps") is not None:
        bars["ultralytics loop"] = result["ultralytics_fps"]
    bars.update({f"replay {k}": v["fps"] for k, v in result["replay_fps"].items()})
    steps = result.get("camera_steps", [])
    fig, axes = plt.subplots(1, 2 if steps else 1, figsize=(11 if steps else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.barh(list(bars), list(bars.values()), color="tab:blue")
    ax.set(xlabel="frames/s", title=f"{Path(result['model']).name} on {Path(result['clip']).name}")
    for y, value in enumerate(bars.values()):
        ax.text(value, y, f" {value:g}", va="center")
    if steps:
        ax2 = axes[0][1]
        counts = [s["cameras"] for s in steps]
        ax2.plot(counts, [s["p95_latency_ms"] for s in steps], "o-", label="p95 latency (ms)")
        ax2.plot(counts, [s["p50_latency_ms"] for s in steps], "s--", label="p50 latency (ms)")
        ax2.axhline(KEEPS_UP_P95_MS, color="grey", lw=0.8)
        ax3 = ax2.twinx()
        ax3.plot(counts, [s["min_camera_fps"] for s in steps], "^-", color="tab:green", label="min camera fps")
        ax2.set(xlabel="cameras", ylabel="ms", title=f"{result['camera_size']} cameras at {result['camera_fps']:g} fps")
        ax3.set_ylabel("analysed frames/s per camera")
        ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(result: dict[str, Any]) -> str:
    raw = ", ".join(f"{k} {v:g}" for k, v in result["raw_fps"].items())
    lines = [f"raw ONNX Runtime: {raw} frames/s",
             f"ultralytics loop: {result['ultralytics_fps']} frames/s" if result["ultralytics_fps"] is not None
             else f"ultralytics loop: {result['ultralytics']}"]
    lines += [f"replay ({k}): {v['fps']:g} frames/s" for k, v in result["replay_fps"].items()]
    match = result["detections_match"]
    if match is not None:
        lines.append(f"detections match at conf {match['conf_threshold']}: {match['match']} ({match['boxes']} boxes on {match['frames']} frames, "
                     f"max {match['max_box_diff_px']} px, {match['max_score_diff']} score)")
    for step in result.get("camera_steps", []):
        lines.append(f"{step['cameras']} camera(s): min {step['min_camera_fps']} fps per camera, p50/p95 "
                     f"{step['p50_latency_ms']}/{step['p95_latency_ms']} ms, {'holds' if step['keeps_up'] else 'falls behind'}")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    size = (int(width), int(height)) if width.isdigit() and height.isdigit() else (0, 0)
    if min(size) <= 0:
        raise ValueError(f"--camera-size: expected WxH such as 1280x720, got {text!r}")
    return size


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.config import load_settings
    from pipeline.logs import setup_logging

    settings = load_settings(args.config)
    setup_logging("DEBUG" if args.verbose else "WARNING")
    model = args.model or settings.detector.model
    try:
        size = _size(args.camera_size)
        for what, path in (("clip", args.clip), ("model", model)):
            if not Path(path).is_file():
                raise ValueError(f"{what} {path} not found")
        if args.cameras is not None and args.cameras < 1:
            raise ValueError(f"--cameras: must be at least 1, got {args.cameras}")
        result = run_bench(settings, args.clip, Path(model), args.frames, args.cameras, args.camera_fps,
                           args.camera_seconds, size, args.match_conf, not args.cameras_in_phase)
    except (ValueError, RuntimeError) as exc:
        print(f"scratchwatch bench: {exc}", file=sys.stderr)
        return 1
    if args.chart:
        try:
            draw_chart(result, args.chart)
        except ImportError:
            print("scratchwatch bench: --chart needs matplotlib (pip install -e '.[train]')", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return 0
