"""Stages started on their own (`scratchwatch stage ...`), as real processes on loopback tcp.

1. capture, inference and incidents as three processes end with exactly the incidents the
   supervisor's single-process run stores for the same file camera.
2. Many hosts on one machine: two capture nodes sending JPEG frames over CurveZMQ, two inference
   workers sharing them, one incidents stage writing one database; both workers analysed frames,
   every frame reached the tracker in order, the incidents match the raw single-process run.
3. Two hosts as two network namespaces the test makes (root only; skipped otherwise): a capture
   node whose own loopback cannot reach the central host's stages sends JPEG over CurveZMQ across
   a veth link, and the central host stores the single-process run's incidents.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq.auth
from sqlalchemy import select

from app.keys import generate
from pipeline.config import load_settings
from pipeline.runner import run_cameras
from storage.db import connect
from storage.models import Incident
from tests.pipeline.conftest import CLIP_FRAMES

REPO = Path(__file__).resolve().parents[2]
READY_S = 90.0


def _free_ports(count: int) -> list[int]:
    """``count`` consecutive free ports (workers bind frames_port + N)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return list(range(base, base + count))
    raise RuntimeError("no free port range")


class Stage:
    """A `scratchwatch stage NAME` process (``netns``: inside that network namespace); its log lines
    are collected as they come."""

    def __init__(self, config: Path, name: str, netns: str | None = None) -> None:
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*(["ip", "netns", "exec", netns] if netns else []), sys.executable, "-m", "pipeline.cli", "stage", name,
             "--config", str(config)],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float = READY_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}:\n" + "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"{self.name}: no {text!r} in:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.1)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def log(self) -> str:
        return "\n".join(self.lines[-40:])


def _write_config(path: Path, base: dict[str, Any], **sections: Any) -> Path:
    raw = {key: (dict(value) if isinstance(value, dict) else value) for key, value in base.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(raw))
    return path


def _incidents(url: str) -> list[tuple]:
    """What an incident is, independent of run: camera, frames, box, score, detections, closed."""
    engine = connect(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Incident)).mappings().all()
    finally:
        engine.dispose()
    return sorted((r["camera_id"], r["first_media_time_s"], r["media_time_s"], r["x1"], r["y1"], r["x2"], r["y2"],
                   round(r["best_score"], 3), r["detection_count"], r["closed_at"] is not None, r["snapshot_path"] is not None)
                  for r in rows)


def _wait_closed(url: str, expected: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for row in _incidents(url) if row[9]) >= expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"only {_incidents(url)} of {expected} closed incidents after {timeout} s")


@pytest.fixture
def base_config(tmp_path: Path, red_model: Path, car_model: Path, two_mark_clip: Path) -> dict[str, Any]:
    return {
        "detector": {"model": str(red_model), "provider": "cpu", "threads": 1, "car_gate": "strict",
                     "cars": {"model": str(car_model), "inspect_every_s": 0}},
        "tracker": {"min_hits": 3, "max_missed": 5},
        "metrics": {"enabled": False},
        "retention": {"enabled": False},
    }


def _reference(tmp_path: Path, base: dict[str, Any], cameras: list[dict[str, Any]]) -> list[tuple]:
    """The supervisor's single-process run (`scratchwatch run`) of the same file cameras; it must be complete."""
    config = _write_config(tmp_path / "reference.yaml", base, data_dir=str(tmp_path / "reference"), cameras=cameras)
    settings = load_settings(config)
    report = run_cameras(settings)
    assert report.ok, f"the reference run did not complete: {report.problems}"
    return _incidents(settings.database_url)


def test_three_stage_processes_store_the_supervisors_incidents(tmp_path: Path, base_config, two_mark_clip: Path) -> None:
    cameras = [{"id": "lot", "source": str(two_mark_clip), "fps": None, "realtime": False}]
    reference = _reference(tmp_path, base_config, cameras)
    assert len(reference) == 2 and all(row[9] for row in reference)
    frames_port, detections_port = _free_ports(2)
    config = _write_config(tmp_path / "split.yaml", base_config, data_dir=str(tmp_path / "split"), cameras=cameras,
                           transport={"kind": "tcp", "host": "127.0.0.1", "frames_port": frames_port,
                                      "detections_port": detections_port})
    url = load_settings(config).database_url
    incidents = Stage(config, "incidents")
    inference = Stage(config, "inference")
    stages = [incidents, inference]
    try:
        incidents.wait_for("incidents stage ready")
        inference.wait_for("inference stage ready")
        capture = Stage(config, "capture")
        stages.append(capture)
        assert capture.proc.wait(120) == 0, capture.log()  # the file ended: capture exits by itself
        assert f"lot {CLIP_FRAMES} frames" in capture.log()
        _wait_closed(url, len(reference))
        incidents.wait_for(f"camera lot ended after {CLIP_FRAMES} frames", 30)
    finally:
        codes = {stage.name: stage.stop() for stage in reversed(stages)}
    assert codes == {"capture": 0, "inference": 0, "incidents": 0}, {s.name: s.log() for s in stages}
    assert _incidents(url) == reference


def _scrape(port: int) -> dict[str, float]:
    """The real endpoint's samples, ``name{labels}`` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_many_hosts_two_capture_nodes_two_workers_one_incidents_stage(tmp_path: Path, base_config, two_mark_clip: Path) -> None:
    cameras = {"a": [{"id": "lot-a", "source": str(two_mark_clip), "fps": None, "realtime": False}],
               "b": [{"id": "lot-b", "source": str(two_mark_clip), "fps": None, "realtime": False}]}
    reference = _reference(tmp_path, base_config, cameras["a"] + cameras["b"])  # raw frames, one process
    assert len(reference) == 4
    frames_port, _, detections_port, metrics_port, *_ = _free_ports(8)
    central_public, central_secret, _ = generate(tmp_path / "keys", "central")
    node_keys = {node: generate(tmp_path / "keys", f"capture-{node}") for node in "ab"}
    transport = {"kind": "tcp", "host": "127.0.0.1", "frames_port": frames_port, "detections_port": detections_port,
                 "inference_workers": 2}
    central = _write_config(
        tmp_path / "central.yaml", base_config, data_dir=str(tmp_path / "central"),
        metrics={"enabled": True, "port": metrics_port},
        transport={**transport, "curve": {"enabled": True, "key_file": str(central_secret),
                                          "allowed_keys": [keys[2] for keys in node_keys.values()]}},
    )
    nodes = {
        node: _write_config(
            tmp_path / f"capture-{node}.yaml", base_config, data_dir=str(tmp_path / f"node-{node}"), cameras=cameras[node],
            capture={"frame_encoding": "jpeg", "jpeg_quality": 95},
            transport={**transport, "inference_host": "127.0.0.1", "incidents_host": "127.0.0.1",
                       "curve": {"enabled": True, "key_file": str(node_keys[node][1]),
                                 "server_key": zmq.auth.load_certificate(central_public)[0].decode()}},
        )
        for node in "ab"
    }
    url = load_settings(central).database_url
    incidents, workers = Stage(central, "incidents"), [Stage(central, f"inference-{n}") for n in range(2)]
    stages = [incidents, *workers]
    try:
        incidents.wait_for("incidents stage ready")
        for worker in workers:
            worker.wait_for("inference stage ready")
        captures = [Stage(nodes[node], "capture") for node in "ab"]
        stages += captures
        for capture in captures:
            assert capture.proc.wait(120) == 0, capture.log()
        _wait_closed(url, len(reference))
        for camera in ("lot-a", "lot-b"):
            incidents.wait_for(f"camera {camera} ended after {CLIP_FRAMES} frames", 30)
        time.sleep(1.5)  # the workers heartbeat their counters once a second
        worker_metrics = [_scrape(metrics_port + 2 + n) for n in range(2)]
        per_worker = [metrics.get("scratchwatch_inference_frames_total", 0) for metrics in worker_metrics]
        central_metrics = _scrape(metrics_port)
    finally:
        codes = {stage.name: stage.stop() for stage in reversed(stages)}
    assert set(codes.values()) == {0}, {s.name: s.log() for s in stages}
    assert sum(per_worker) == 2 * CLIP_FRAMES and min(per_worker) > 0, f"the workers shared the load: {per_worker}"
    for camera in ("lot-a", "lot-b"):
        assert central_metrics[f"scratchwatch_frames_analysed_total{{camera={camera}}}"] == CLIP_FRAMES
        assert central_metrics[f"scratchwatch_incidents_closed_total{{camera={camera}}}"] == 2
    assert central_metrics["scratchwatch_incidents_late_total"] == 0, "every frame reached the tracker in order"
    assert central_metrics["scratchwatch_db_write_seconds_count"] >= 4
    assert central_metrics["scratchwatch_spool_records"] == 0 and central_metrics["scratchwatch_spool_oldest_age_seconds"] == 0
    assert central_metrics["scratchwatch_spool_bytes"] > 0 and central_metrics["scratchwatch_incidents_snapshot_errors_total"] == 0
    for worker in worker_metrics:  # car stage and damage model timed apart
        assert worker["scratchwatch_inference_car_stage_seconds_count"] > 0
        assert worker["scratchwatch_inference_damage_stage_seconds_count"] > 0
    stored = _incidents(url)
    # same cameras, first frames, detection counts, closed, with snapshots; JPEG (quality 95) moves scores a little,
    # so the best frame may be another of the incident's frames, with its box a few pixels away
    assert [row[:2] + row[8:] for row in stored] == [row[:2] + row[8:] for row in reference]
    for got, want in zip(stored, reference):
        assert abs(got[7] - want[7]) <= 0.02 and max(abs(g - w) for g, w in zip(got[3:7], want[3:7])) <= 4, (got, want)


def _netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces (not root, no `ip`, no CAP_NET_ADMIN), or None."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "network namespaces need root and iproute2's `ip`"
    probe = f"swprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:  # the test joins its namespaces with a veth pair: the kernel must offer one
        veth = subprocess.run(["ip", "-n", probe, "link", "add", "swa", "type", "veth", "peer", "name", "swb"], capture_output=True, text=True)
        return None if veth.returncode == 0 else f"no veth pair: {veth.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class TwoHosts:
    """Two network namespaces joined by a veth pair: a capture host (10.213.N.1) and a central host
    (10.213.N.2). Each has its own loopback, so the only way between them is the veth link."""

    def __init__(self) -> None:
        tag = os.getpid() % 250
        self.capture, self.central = f"swcap{os.getpid()}", f"swctr{os.getpid()}"
        self.capture_ip, self.central_ip = f"10.213.{tag}.1", f"10.213.{tag}.2"
        veth = (f"swc{os.getpid()}"[:15], f"swi{os.getpid()}"[:15])
        for command in (
            ["ip", "netns", "add", self.capture], ["ip", "netns", "add", self.central],
            ["ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1]],
            ["ip", "link", "set", veth[0], "netns", self.capture], ["ip", "link", "set", veth[1], "netns", self.central],
            *[["ip", "-n", ns, "link", "set", "lo", "up"] for ns in (self.capture, self.central)],
            ["ip", "-n", self.capture, "addr", "add", f"{self.capture_ip}/30", "dev", veth[0]],
            ["ip", "-n", self.central, "addr", "add", f"{self.central_ip}/30", "dev", veth[1]],
            ["ip", "-n", self.capture, "link", "set", veth[0], "up"], ["ip", "-n", self.central, "link", "set", veth[1], "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)

    def reaches(self, ns: str, host: str, port: int) -> bool:
        """Whether a tcp connect from inside ``ns`` to host:port succeeds."""
        probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3)"
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], capture_output=True).returncode == 0

    def close(self) -> None:
        for ns in (self.capture, self.central):  # deleting a namespace deletes its end of the veth pair, and the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


NETNS_UNAVAILABLE = _netns_unavailable()


@pytest.mark.skipif(NETNS_UNAVAILABLE is not None, reason=str(NETNS_UNAVAILABLE))
def test_a_capture_node_in_its_own_network_namespace_reaches_the_central_host_only_over_the_link(
    tmp_path: Path, base_config, two_mark_clip: Path
) -> None:
    cameras = [{"id": "gate", "source": str(two_mark_clip), "fps": None, "realtime": False}]
    reference = _reference(tmp_path, base_config, cameras)
    frames_port, detections_port = 47001, 47011
    central_public, central_secret, _ = generate(tmp_path / "keys", "central")
    _, node_secret, node_key = generate(tmp_path / "keys", "capture")
    hosts = TwoHosts()
    stages: list[Stage] = []
    try:
        transport = {"kind": "tcp", "frames_port": frames_port, "detections_port": detections_port, "inference_workers": 1}
        central = _write_config(
            tmp_path / "central.yaml", base_config, data_dir=str(tmp_path / "central"),
            transport={**transport, "host": hosts.central_ip,
                       "curve": {"enabled": True, "key_file": str(central_secret), "allowed_keys": [node_key]}},
        )
        node = _write_config(
            tmp_path / "capture.yaml", base_config, data_dir=str(tmp_path / "node"), cameras=cameras,
            capture={"frame_encoding": "jpeg", "jpeg_quality": 95},
            transport={**transport, "host": hosts.capture_ip, "inference_host": hosts.central_ip, "incidents_host": hosts.central_ip,
                       "curve": {"enabled": True, "key_file": str(node_secret),
                                 "server_key": zmq.auth.load_certificate(central_public)[0].decode()}},
        )
        incidents, worker = Stage(central, "incidents", hosts.central), Stage(central, "inference-0", hosts.central)
        stages += [incidents, worker]
        incidents.wait_for("incidents stage ready")
        worker.wait_for("inference stage ready")
        assert hosts.reaches(hosts.capture, hosts.central_ip, frames_port), "the link carries tcp to the central host"
        assert not hosts.reaches(hosts.capture, "127.0.0.1", frames_port), "the capture host's loopback is its own"
        capture = Stage(node, "capture", hosts.capture)
        stages.append(capture)
        assert capture.proc.wait(120) == 0, capture.log()
        url = load_settings(central).database_url
        _wait_closed(url, len(reference))
        incidents.wait_for(f"camera gate ended after {CLIP_FRAMES} frames", 30)
    finally:
        codes = {stage.name: stage.stop() for stage in reversed(stages)}
        hosts.close()
    assert set(codes.values()) == {0}, {s.name: s.log() for s in stages}
    stored = _incidents(url)
    assert [row[:2] + row[8:] for row in stored] == [row[:2] + row[8:] for row in reference]
    for got, want in zip(stored, reference):  # JPEG at 95 moves scores and boxes a little
        assert abs(got[7] - want[7]) <= 0.02 and max(abs(g - w) for g, w in zip(got[3:7], want[3:7])) <= 4, (got, want)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_stage_unit_template_verifies_and_keeps_the_main_units_hardening(tmp_path: Path, capsys) -> None:
    from app.service import STAGE_UNIT_TEMPLATE, UNIT_TEMPLATE
    from pipeline.cli import main

    hardening = lambda text: [line for line in text[text.index("# Hardening"):].splitlines() if "=" in line and not line.startswith("#")]  # noqa: E731
    assert hardening(STAGE_UNIT_TEMPLATE.read_text()) == hardening(UNIT_TEMPLATE.read_text())
    assert main(["install-service", "--prefix", str(tmp_path / "root"), "--user", "swtest"]) == 0
    installed = tmp_path / "root/etc/systemd/system/scratchwatch-stage@.service"
    assert str(installed) in capsys.readouterr().out
    exec_start = re.search(r"^ExecStart=(.*)$", installed.read_text(), re.M).group(1).split()
    assert exec_start[1:] == ["stage", "%i"] and os.access(exec_start[0], os.X_OK)
    instance = tmp_path / "scratchwatch-stage@inference-1.service"  # a template verifies as an instance
    instance.write_text(installed.read_text())
    verify = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(instance)], capture_output=True, text=True, timeout=60)
    exposure = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout + security.stderr).group(1))
    assert exposure <= 2.0
