"""`bench/bench_gpu.py` end to end on the CPU (`--quick --provider cpu`): the code path the lead runs
on a lent GPU, with the shipped models, in well under a minute, importing only what the GPU machine
has (no pydantic, pyzmq, SQLAlchemy, yaml; torch never on the CPU path)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import runpy, sys
sys.argv = ["bench/bench_gpu.py", "--quick", "--provider", "cpu", "--out", sys.argv[1]]
code = 0
try:
    runpy.run_path("bench/bench_gpu.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code
top = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
print("IMPORTS " + " ".join(top), file=sys.stderr)
sys.exit(code)
"""


def test_the_gpu_bench_runs_end_to_end_on_the_cpu_quickly_with_a_small_import_set(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PROBE, str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 60
    imported = set(done.stderr.rsplit("IMPORTS ", 1)[1].split())
    assert {"numpy", "cv2", "onnxruntime"} <= imported
    assert not imported & {"pydantic", "zmq", "sqlalchemy", "yaml", "torch", "fastapi"}, imported
    assert "raw ONNX Runtime: damage fp32" in done.stderr, "progress lines"

    result = json.loads(out.read_text())
    assert set(result["raw"]) == {"damage_fp32", "damage_fp16", "cars_fp32", "cars_fp16", "damage_fp32_u8", "damage_fp16_u8",
                                  "cars_fp32_u8"}
    assert set(result["raw"]["damage_fp32"]) == {"1", "2"} and result["raw"]["damage_fp32"]["2"]["host_fps"] > 0
    assert result["u8_conversion"]["damage_fp16"] == {"max_raw_diff": 0.0}
    detector = result["detector"]
    assert detector["damage_fp16_unbound_b2"]["provider"] == "CPUExecutionProvider"
    assert detector["damage_fp32_u8_unbound_b2"]["input"] == "uint8" and detector["damage_fp32_unbound_b2"]["input"] == "float32"
    assert detector["damage_fp32_u8_unbound_w2_b2"]["workers"] == 2, "a larger letterbox pool is tried"
    assert result["ratio_batch"] == 2
    ratio = result["ratio"]["damage_fp32"]
    assert ratio["ratio"] > 0 and ratio["raw_host_fps"] == result["raw"]["damage_fp32"]["2"]["host_fps"], "against the float model"
    assert ratio["ratio_vs_raw_u8"] > 0 and ratio["detector_row"] in detector
    assert set(result["section_s"]) == {"copies", "raw", "detector", "parity", "cpu_decode"}
    assert "skipped" in result["parity"]
    assert result["cpu_decode"]["jpeg_fps_per_core"] > 0 and result["cpu_decode"]["video_frames"] >= 2
    streams = result["streams"]
    assert streams["streams_per_gpu"] == min(streams["gpu_car_stage_streams_estimate"], streams["cpu_video_streams"])
    assert json.loads(done.stdout)["streams"] == streams
