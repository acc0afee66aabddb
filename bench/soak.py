"""Soak: the daemon against live cameras for a while; does anything grow that should not?

Each camera is a clip looped in real time by Debian's ffmpeg as an MPEG-TS stream on loopback
(a real network source for OpenCV). `scratchwatch run` analyses them for ``--seconds``; every
second the process tree's RSS and open file descriptors are sampled and the daemon's metrics
endpoint is scraped. After a warm-up (the first quarter, at least 10 s):

- RSS of the supervisor and its stages grows by at most 5 %;
- open file descriptors do not grow;
- the backlog (``scratchwatch_frames_in_flight``: sent, neither analysed nor dropped) stays within
  what the sockets' high-water marks can hold;
- after a clean stop, every incident the incidents stage opened (its final count, logged by
  `scratchwatch run`) is in the database, once;
- against a reference run (a plain `replay` of the same clip at the same fps): in every loop of the
  clip that a camera streamed completely, each incident of the reference appears exactly once, at
  the same place in the loop (within ``PHASE_TOLERANCE_S`` plus a frame), and no other appears.
  The soak's incidents carry wall-clock times, so the loops are found by aligning them with the
  reference's media times (the offset that matches the most).

Prints one JSON object; exit 0 only if every check holds.

    python bench/soak.py --clip demo/intel_car-detection.mp4 --cameras 2 --seconds 1800
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent
MAX_RSS_GROWTH = 0.05
PHASE_TOLERANCE_S = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=REPO / "demo/intel_car-detection.mp4")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=5.0, help="analysed frames per second per camera")
    parser.add_argument("--model", type=Path, default=REPO / DEFAULT_MODEL)
    parser.add_argument("--cars", type=Path, default=REPO / "models/scratchwatch-cars-yolov5n-coco-384.onnx",
                        help="car-stage model; --no-cars runs the damage model on whole frames")
    parser.add_argument("--no-cars", dest="cars", action="store_const", const=None)
    parser.add_argument("--synthetic", action="store_true",
                        help="the tests' generated clip and red-mark model instead (an incident every loop, which the reference "
                        "comparison needs; the shipped models find none on the demo clip); no car stage")
    args = parser.parse_args(argv)
    if args.synthetic:
        args.clip, args.model, args.cars = synthetic_inputs(Path(tempfile.mkdtemp(prefix="scratchwatch-soak-synthetic-")))
    report = soak(args.clip, args.cameras, args.seconds, args.fps, args.model, args.cars)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def synthetic_inputs(folder: Path) -> tuple[Path, Path, None]:
    """A 5 s clip with one red mark per loop and the model that finds it (tests/pipeline/synthetic.py)."""
    sys.path.insert(0, str(REPO))
    from tests.pipeline.synthetic import Mark, build_red_model, write_clip

    clip = write_clip(folder / "lot.mp4", 50, [Mark(0, 8, (60, 60, 20, 20))], size=(160, 120))
    return clip, build_red_model(folder / "red.onnx"), None


def soak(clip: Path, cameras: int, seconds: float, fps: float, model: Path, cars: Path | None) -> dict[str, Any]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("soak: ffmpeg is needed to serve the clips as live streams (apt-get install ffmpeg)")
    with tempfile.TemporaryDirectory(prefix="scratchwatch-soak-") as folder:
        work = Path(folder)
        ports = [_free_port() for _ in range(cameras)]
        servers = [_serve(ffmpeg, clip, port) for port in ports]
        metrics_port = _free_port()
        config = work / "config.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(work / "data"),
            "cameras": [{"id": f"cam{i}", "source": f"tcp://127.0.0.1:{port}", "fps": fps} for i, port in enumerate(ports)],
            "detector": _detector_section(model, cars),
            "metrics": {"port": metrics_port},
        }))
        reference = reference_incidents(work, clip, fps, model, cars)
        time.sleep(0.5)  # the servers listen
        daemon = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            samples = _sample(daemon, metrics_port, seconds)
        finally:
            stopped_at = time.time()
            daemon.send_signal(signal.SIGTERM)
            try:
                logs = daemon.communicate(timeout=120)[1]
            except subprocess.TimeoutExpired:
                daemon.kill()
                logs = daemon.communicate()[1]
            code = daemon.returncode
            for server in servers:
                server.kill()
                server.wait()
        stored = _stored_incidents(work / "data" / "scratchwatch.db")
        report = _judge(samples, _opened(logs), stored, code, seconds, cameras)
        windows = {f"cam{i}": (_first_analysed(samples, f"cam{i}"), stopped_at) for i in range(cameras)}
        comparison = compare_with_reference(_opened_times(work / "data" / "scratchwatch.db"), reference, windows, fps)
        report["reference"] = comparison
        report["ok"] = report["ok"] and comparison["loops"] > 0 and not (comparison["lost"] or comparison["duplicated"] or comparison["unexpected"])
        return report


def _detector_section(model: Path, cars: Path | None) -> dict[str, Any]:
    return {"model": str(model.resolve()), "provider": "cpu", **({"cars": {"model": str(cars.resolve())}} if cars else {"car_gate": "off"})}


def reference_incidents(work: Path, clip: Path, fps: float, model: Path, cars: Path | None) -> dict[str, Any]:
    """The reference run: a plain replay of the clip at ``fps`` (media time): its incidents' first times."""
    import cv2

    from pipeline.config import load_settings
    from pipeline.runner import replay_files

    data = work / "reference"
    config = work / "reference.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "replay": {"fps": fps}, "detector": _detector_section(model, cars)}))
    report = replay_files(load_settings(config), [clip], progress=False)
    if not report.ok:  # only a complete replay is a reference
        raise SystemExit(f"soak: the reference replay did not complete: {report.problems}")
    cap = cv2.VideoCapture(str(clip))
    duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / (cap.get(cv2.CAP_PROP_FPS) or 25.0)
    cap.release()
    with sqlite3.connect(data / "scratchwatch.db") as conn:  # no incident: the writer never made the schema
        made = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'incidents'").fetchone()
        starts = sorted(t for (t,) in conn.execute("SELECT first_media_time_s FROM incidents")) if made else []
    return {"duration_s": duration, "starts_s": starts}


def compare_with_reference(opened: dict[str, list[float]], reference: dict[str, Any], windows: dict[str, tuple[float, float]],
                           fps: float) -> dict[str, Any]:
    """Per camera, match the soak's incidents (wall-clock opening times) to the reference's, loop by loop.

    Loop k of a camera starts at ``base + k * duration``; ``base`` is the alignment (soak time minus
    a reference start) under which most incidents match. Only loops wholly inside the camera's
    window (first analysed frame .. stop) count: a reference incident with no match there is lost,
    one matched twice duplicated, a soak incident there that matches none unexpected.
    """
    duration, starts = reference["duration_s"], reference["starts_s"]
    tolerance = PHASE_TOLERANCE_S + 1 / fps
    result: dict[str, Any] = {"reference_per_loop": len(starts), "loops": 0, "lost": [], "duplicated": [], "unexpected": []}
    for camera, (first, last) in windows.items():
        times = sorted(opened.get(camera, []))

        def place(t: float, base: float) -> tuple[int, int] | None:
            for j, start in enumerate(starts):
                k = round((t - base - start) / duration)
                if abs(t - (base + k * duration + start)) <= tolerance:
                    return k, j
            return None

        candidates = [t - start for t in times for start in starts] or [first]
        base = max(candidates, key=lambda b: sum(place(t, b) is not None for t in times))
        full = [k for k in range(-1, int((last - base) / duration) + 2) if base + k * duration >= first and base + (k + 1) * duration <= last]
        result["loops"] += len(full)
        seen: dict[tuple[int, int], int] = {}
        for t in times:
            where = place(t, base)
            if where is None:
                if any(base + k * duration <= t < base + (k + 1) * duration for k in full):
                    result["unexpected"].append({"camera": camera, "at": round(t - base, 2)})
            elif where[0] in full:
                seen[where] = seen.get(where, 0) + 1
        for k in full:
            for j in range(len(starts)):
                count = seen.get((k, j), 0)
                if count != 1:
                    result["lost" if count == 0 else "duplicated"].append({"camera": camera, "loop": k, "at_s": starts[j], "count": count})
    return result


def _first_analysed(samples: list[dict[str, Any]], camera: str) -> float:
    """Wall time of the first sample in which the camera had frames analysed (its stream runs)."""
    key = f'scratchwatch_frames_analysed_total{{camera="{camera}"}}'
    return next((s["wall"] for s in samples if s["metrics"].get(key, 0) > 0), float("inf"))


def _opened_times(db: Path) -> dict[str, list[float]]:
    from datetime import datetime, timezone

    opened: dict[str, list[float]] = {}
    with sqlite3.connect(db) as conn:
        for camera, text in conn.execute("SELECT camera_id, opened_at FROM incidents"):
            when = datetime.fromisoformat(str(text))
            opened.setdefault(camera, []).append((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp())
    return opened


def _serve(ffmpeg: str, clip: Path, port: int) -> subprocess.Popen:
    """The clip, looped and paced at its frame rate, to the first client of tcp://127.0.0.1:port."""
    return subprocess.Popen([ffmpeg, "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-an",
                             "-c:v", "mpeg4", "-q:v", "5", "-f", "mpegts", f"tcp://127.0.0.1:{port}?listen=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _sample(daemon: subprocess.Popen, metrics_port: int, seconds: float) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds and daemon.poll() is None:
        time.sleep(1.0)
        metrics = _scrape(metrics_port)
        if metrics is None:
            continue  # still loading the model
        pids = _tree(daemon.pid)
        samples.append({"t": time.monotonic() - start, "wall": time.time(), "rss_kb": sum(_rss_kb(p) for p in pids),
                        "fds": sum(_fds(p) for p in pids), "processes": len(pids), "metrics": metrics})
    return samples


def _opened(logs: str) -> int:
    """Incidents opened over the whole run, from the daemon's final per-camera lines (after the drain)."""
    return sum(int(n) for n in re.findall(r"camera \S+: \d+ frames analysed, (\d+) incidents", logs))


def _judge(samples: list[dict[str, Any]], opened: int, stored: tuple[int, int], code: int, seconds: float, cameras: int) -> dict[str, Any]:
    warm = [s for s in samples if s["t"] >= max(10.0, seconds / 4)]
    if len(warm) < 2:
        return {"ok": False, "error": "too few samples after warm-up (did the daemon start?)", "exit_code": code}
    first, last = warm[0], warm[-1]
    rss_growth = (last["rss_kb"] - first["rss_kb"]) / first["rss_kb"]
    backlog = [_backlog(s["metrics"]) for s in warm]
    analysed = sum(v for k, v in last["metrics"].items() if k.startswith("scratchwatch_frames_analysed_total"))
    report = {
        "seconds": round(samples[-1]["t"], 1), "cameras": cameras,
        "analysed_fps_per_camera": round(analysed / samples[-1]["t"] / cameras, 2),
        "rss_mb_after_warmup": round(first["rss_kb"] / 1024, 1), "rss_mb_end": round(last["rss_kb"] / 1024, 1),
        "rss_growth": round(rss_growth, 4),
        "fds_after_warmup": first["fds"], "fds_end": last["fds"],
        "backlog_after_warmup": backlog[0], "backlog_max": max(backlog), "backlog_end": backlog[-1],
        "incidents_opened": opened, "incidents_stored": stored[0], "incident_uids_stored": stored[1],
        "exit_code": code,
    }
    report["backlog_bound"] = _backlog_bound(cameras)
    report["ok"] = (rss_growth <= MAX_RSS_GROWTH and last["fds"] <= first["fds"] and max(backlog) <= report["backlog_bound"]
                    and stored[0] == opened == stored[1] and code == 0 and analysed > 0)
    return report


def _backlog_bound(cameras: int, hwm: int = 4, max_batch: int = 4) -> int:
    """What the sockets can hold at the default high-water marks: a send and a receive queue per
    camera into inference, one into incidents, plus a batch in the detector. A queue that grows
    without bound (the failure a soak looks for) passes this within seconds."""
    return 2 * hwm * (cameras + 1) + max_batch


def _backlog(metrics: dict[str, float]) -> int:
    """Frames sent but neither analysed nor dropped: what sits in queues right now."""
    return int(metrics.get("scratchwatch_frames_in_flight", 0))


def _scrape(port: int) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def _tree(pid: int) -> list[int]:
    """The daemon and its descendants (stages, the multiprocessing resource tracker)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _stored_incidents(db: Path) -> tuple[int, int]:
    """(rows, distinct uids) in the daemon's SQLite database."""
    if not db.exists():
        return (0, 0)
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT uid) FROM incidents").fetchone()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
