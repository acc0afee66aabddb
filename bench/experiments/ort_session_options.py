"""ONNX Runtime session options for one damage crop, side by side (2026-12-06, issue "Speed and scale").

Why: v4 is two members, each run on the crop and its mirror; ONNX Runtime's parallel executor could
run the members' branches on separate cores, and intra-op spinning trades idle CPU for wake-up
latency. Measured against what `pipeline.detector._session` ships (sequential, 2 intra-op threads,
no spinning): batch 1, random input at the model's own size (its `imgsz` metadata), best of 3
interleaved passes of 3 s each; prints one JSON object, ms per run.

    .venv/bin/python bench/experiments/ort_session_options.py models/scratchwatch-v4-ensemble-480.onnx ...
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort

from pipeline.detector import _imgsz

OPTIONS = {  # name: execution mode, inter-op threads, intra-op threads, spinning
    "sequential_2_threads_no_spin (shipped)": (ort.ExecutionMode.ORT_SEQUENTIAL, 1, 2, "0"),
    "sequential_2_threads_spin": (ort.ExecutionMode.ORT_SEQUENTIAL, 1, 2, "1"),
    "parallel_2x1_no_spin": (ort.ExecutionMode.ORT_PARALLEL, 2, 1, "0"),
    "parallel_2x1_spin": (ort.ExecutionMode.ORT_PARALLEL, 2, 1, "1"),
}


def session(path: str, mode, inter: int, intra: int, spin: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode, options.inter_op_num_threads, options.intra_op_num_threads = mode, inter, intra
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ms_per_run(path: str, passes: int = 3, seconds: float = 3.0) -> dict[str, float]:
    sessions = {name: session(path, *opts) for name, opts in OPTIONS.items()}
    probe = next(iter(sessions.values()))
    first = probe.get_inputs()[0]
    height, width = _imgsz(probe.get_modelmeta().custom_metadata_map, first.shape)  # the detector's own rule
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(passes):
        for name, s in sessions.items():
            s.run(None, {first.name: x})
            started, runs = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                s.run(None, {first.name: x})
                runs += 1
            best[name] = min(best[name], (time.perf_counter() - started) / runs * 1000)
    return {name: round(v, 1) for name, v in best.items()}


if __name__ == "__main__":
    print(json.dumps({path: ms_per_run(path) for path in sys.argv[1:]}, indent=1))
