"""Bandwidth per camera between a capture node and the inference host: raw frames against JPEG,
and against passing the camera's own compressed stream through.

Frames of real clips are encoded exactly as capture sends them (``pipeline.messages.encode_frame``:
JSON header + payload) and decoded as inference receives them (``decode``), at 1280x720 and
1920x1080: bytes per frame, Mbit/s at the analysed rate (5 fps by default), and the CPU cost of
encoding (capture node) and decoding (inference host) per frame. ZeroMQ's own framing adds a few
bytes per message and CurveZMQ 16 more (the MAC): negligible beside the payloads, not counted.

    .venv/bin/python bench/bench_bandwidth.py [--clip FILE ...] [--frames 40] [--fps 5] [--out bench/results/bandwidth.json]

The passthrough figures (``stream``) are the clip's own packets, read without decoding (OpenCV's raw
mode, ``CAP_PROP_FORMAT -1``, the same FFmpeg demuxer capture uses): their Mbit/s at the clip's
native size, and what the receiving host would pay to decode every one of them (a compressed stream
cannot be sampled before decoding: each frame depends on the ones before it), as CPU ms per source
frame (process CPU time over the whole clip, FFmpeg's own threads included) and cores per camera.

A clip smaller than the target size is upscaled (a real 1080p camera has more fine detail, so its
JPEGs are larger than an upscaled clip's: the JSON says which frames were upscaled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.messages import FrameHeader, decode, encode_frame  # noqa: E402

VIDEOS = REPO.parent / "shared" / "videos"
DEFAULT_CLIPS = [VIDEOS / "intel_car-detection.mp4", VIDEOS / "udacity_vehicle-detection_test_video.mp4"]
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
QUALITIES = (70, 85, 95)


def sample_frames(clip: Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the clip."""
    cap = cv2.VideoCapture(str(clip))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    wanted = set(np.linspace(0, max(total - 1, 0), count).astype(int).tolist())
    frames, index = [], 0
    while cap.grab():
        if index in wanted:
            ok, image = cap.retrieve()
            if ok:
                frames.append(image)
        index += 1
    cap.release()
    if not frames:
        raise SystemExit(f"{clip}: no frame decoded")
    return frames


def wire_bytes(parts: list) -> int:
    return sum(len(part) if isinstance(part, bytes) else memoryview(part).nbytes for part in parts)


def measure(frames: list[np.ndarray], encoding: str, quality: int, fps: float) -> dict:
    sizes, encode_ms, decode_ms = [], [], []
    for seq, image in enumerate(frames):
        header = FrameHeader(camera="bench", kind="live", source="bench", seq=seq, captured_ns=time.time_ns(), shape=image.shape,
                             encoding=encoding)
        started = time.perf_counter()
        parts = encode_frame(header, image, jpeg_quality=quality)
        encode_ms.append((time.perf_counter() - started) * 1000)
        sizes.append(wire_bytes(parts))
        payload = [bytes(parts[0]), bytes(memoryview(parts[1]))]
        started = time.perf_counter()
        decoded = decode(payload)
        decode_ms.append((time.perf_counter() - started) * 1000)
        assert decoded.image.shape == image.shape
    mean = statistics.fmean(sizes)
    return {"bytes_per_frame": round(mean), "bytes_per_frame_max": max(sizes), "mbit_s": round(mean * 8 * fps / 1e6, 2),
            "encode_ms": round(statistics.median(encode_ms), 2), "decode_ms": round(statistics.median(decode_ms), 2)}


def stream_cost(clip: Path) -> dict:
    """The clip's own stream as a camera would send it: Mbit/s of its packets, and the CPU cost of
    decoding all of them (what a host receiving passthrough packets must spend per camera)."""
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    if not cap.set(cv2.CAP_PROP_FORMAT, -1):
        raise SystemExit(f"{clip}: OpenCV cannot hand out this file's packets undecoded")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    codec = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
    sizes, keyframes = [], 0
    while True:
        ok, packet = cap.read()
        if not ok:
            break
        sizes.append(packet.size)
        keyframes += int(cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME))
    cap.release()
    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cpu, wall, frames = time.process_time(), time.perf_counter(), 0
    while cap.grab() and cap.retrieve()[0]:
        frames += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    cap.release()
    decode_ms = 1000 * cpu / max(frames, 1)
    return {"codec": codec, "size": f"{width}x{height}", "source_fps": fps, "packets": len(sizes), "keyframes": keyframes,
            "bytes_per_source_frame": round(statistics.fmean(sizes)), "mbit_s": round(sum(sizes) * 8 * fps / len(sizes) / 1e6, 2),
            "decode_cpu_ms_per_source_frame": round(decode_ms, 2), "decode_wall_ms_per_source_frame": round(1000 * wall / max(frames, 1), 2),
            "decode_cores_per_camera": round(decode_ms * fps / 1000, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, action="append", help="clip(s) to sample (default: the lot and street clips)")
    parser.add_argument("--frames", type=int, default=40, help="frames sampled per clip")
    parser.add_argument("--fps", type=float, default=5.0, help="analysed frames per second per camera")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bandwidth.json")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # one core per camera's encoder, as on a capture node with many cameras
    results = {"fps": args.fps, "frames_per_clip": args.frames, "clips": {}}
    for clip in args.clip or DEFAULT_CLIPS:
        source = sample_frames(clip, args.frames)
        native = f"{source[0].shape[1]}x{source[0].shape[0]}"
        per_size = {}
        for name, (width, height) in SIZES.items():
            frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR) for f in source]
            per_size[name] = {"upscaled": source[0].shape[1] < width, "raw": measure(frames, "raw", 0, args.fps),
                              **{f"jpeg_q{q}": measure(frames, "jpeg", q, args.fps) for q in QUALITIES}}
            raw = per_size[name]["raw"]["bytes_per_frame"]
            for q in QUALITIES:
                per_size[name][f"jpeg_q{q}"]["ratio"] = round(raw / per_size[name][f"jpeg_q{q}"]["bytes_per_frame"], 1)
        results["clips"][clip.name] = {"native": native, **per_size, "stream": stream_cost(clip)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
