"""A model file before and after ``scratchwatch fast-dfl``, side by side in one run.

    .venv/bin/python bench/bench_fast_dfl.py BEFORE.onnx AFTER.onnx [BEFORE2 AFTER2 ...] [--clip CLIP] [--frames 48]

ONNX Runtime alone (``raw_fps``: the Detector's session on frames letterboxed beforehand) on the
clip's frames at batch 1 and 4, best of 3 passes interleaved so load changes hit both files
(``interleaved_raw_fps``); prints one JSON object. Keep the file
from before with ``git show HEAD:models/NAME.onnx > /tmp/before.onnx`` ahead of rewriting it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_replay import DEFAULT_CLIP, decode_frames, interleaved_raw_fps  # noqa: E402
from pipeline.detector import Detector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="pairs: the file before, then after the rewrite")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    if len(args.models) % 2:
        sys.exit("give the models in pairs: BEFORE AFTER [BEFORE AFTER ...]")
    frames = decode_frames(args.clip, args.frames)
    out: dict = {"clip": str(args.clip), "frames": len(frames), "load_average": os.getloadavg()}
    for before, after in zip(args.models[::2], args.models[1::2]):
        detectors = {"before": Detector(before, provider="cpu"), "after": Detector(after, provider="cpu")}
        for batch in (1, 4):
            best = interleaved_raw_fps(detectors, frames, batch)
            out[f"{after.name} batch{batch}"] = {**{k: round(v, 2) for k, v in best.items()},
                                                 "speedup": round(best["after"] / best["before"], 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
