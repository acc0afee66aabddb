"""The int8 damage model against its fp32 source: raw ONNX Runtime frames/s and test-split mAP.

    .venv/bin/python bench/bench_int8.py [--fp32 M] [--int8 M] [--clip CLIP] [--data DIR] [--threads N]

In one run, on the same decoded and letterboxed frames: frames/s of each model at batch 1 and at
batch ``--max-batch`` (best of ``--repeats`` passes, interleaved so load changes hit both), then
mAP@0.5 of both on the test split through ``export.evaluate.evaluate_model(gate="off")``, the
pipeline's own detection path. It also reports the CPU's int8 features and which kernels ONNX
Runtime really placed (op types of the optimized int8 graph, e.g. ``QLinearConv``).
Targets: int8 >= 1.8 x fp32 frames/s, mAP@0.5 loss <= 0.01.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from bench.bench_replay import DEFAULT_CLIP, SHIPPED_MODEL, decode_frames, interleaved_raw_fps  # noqa: E402
from pipeline.detector import Detector  # noqa: E402

INT8_MODEL = SHIPPED_MODEL.with_name(f"{SHIPPED_MODEL.stem}-int8.onnx")
DATA = REPO / "datasets/scratch-v2"
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "avx512bw", "avx2")


def cpu_features() -> dict[str, Any]:
    """The CPU model and its int8-relevant flags (from /proc/cpuinfo; Linux only)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = {f.strip() for f in lines.get("flags\t\t", "").split()} or set(
        next((v for k, v in lines.items() if k.strip() == "flags"), "").split())
    model = next((v.strip() for k, v in lines.items() if k.strip() == "model name"), "?")
    return {"cpu": model, "int8_flags": [f for f in INT8_FLAGS if f in flags]}


def placed_ops(model: Path, threads: int | None) -> dict[str, int]:
    """Op types of the graph ONNX Runtime really runs after its fusions (QDQ -> QLinearConv, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # the "hardware specific optimizations" warning is the point here
        if threads:
            options.intra_op_num_threads = threads
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return dict(counts.most_common())


def speed(args: argparse.Namespace) -> dict[str, Any]:
    fp32 = Detector(args.fp32, provider="cpu", threads=args.threads)
    int8 = Detector(args.int8, provider="cpu", threads=args.threads)
    frames = decode_frames(args.clip, args.frames)
    out: dict[str, Any] = {}
    for batch in sorted({1, args.max_batch}):
        best = interleaved_raw_fps({"fp32": fp32, "int8": int8}, frames, batch, args.repeats)
        out[f"batch{batch}"] = {"fp32_fps": round(best["fp32"], 1), "int8_fps": round(best["int8"], 1),
                                "speedup": round(best["int8"] / best["fp32"], 2)}
    return {"frames": len(frames), "frame_shape": list(frames[0].shape), **out}


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from export.evaluate import at_threshold, evaluate_model

    result = {}
    for name, model in (("fp32", args.fp32), ("int8", args.int8)):
        ev, images, _ = evaluate_model(model, args.data, "test", provider="cpu", progress=False, gate="off")
        threshold = Detector(model, provider="cpu", conf_threshold=None).conf_threshold
        result[name] = {"mAP50": round(ev.map50, 4), "mAP50-95": round(ev.map50_95, 4), "images": len(images),
                        "at_model_threshold": at_threshold(ev, threshold)}
    result["mAP50_loss"] = round(result["fp32"]["mAP50"] - result["int8"]["mAP50"], 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--int8", type=Path, default=INT8_MODEL)
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--data", type=Path, default=DATA, help="dataset whose test split is scored")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-accuracy", action="store_true", help="speed only")
    args = parser.parse_args()
    for path in (args.fp32, args.int8, args.clip):
        if not path.is_file():
            sys.exit(f"{path} not found")
    result: dict[str, Any] = {
        "fp32_model": str(args.fp32), "int8_model": str(args.int8), "clip": str(args.clip),
        "ort": ort.__version__, "ort_threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(), **cpu_features(), "int8_kernels": placed_ops(args.int8, args.threads),
        "speed": speed(args),
    }
    if not args.no_accuracy:
        result["accuracy"] = accuracy(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
