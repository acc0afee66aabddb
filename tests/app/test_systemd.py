"""systemd integration: sd_notify on a real datagram socket, the watchdog withheld for a stalled
stage of a real `scratchwatch run`, the unit's hardening score and `install-service`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from app.service import UNIT_TEMPLATE
from app.systemd import Notifier, ServiceWatchdog, watchdog_timeout_s
from pipeline.cli import main
from tests.pipeline.synthetic import Mark, write_clip

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
MAX_EXPOSURE = 2.0
SECRET = "hunter2-camera-password"


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects the messages sent to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []

    def collect(self, seconds: float) -> list[dict[str, str]]:
        deadline = time.monotonic() + seconds
        got = []
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))
            got.append(fields)
        return got

    def wait_for(self, key: str, seconds: float) -> dict[str, str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for fields in self.collect(min(0.5, deadline - time.monotonic())):
                if key in fields:
                    return fields
        raise AssertionError(f"no {key} within {seconds}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_notifier_sends_key_value_datagrams(notify_socket: NotifySocket) -> None:
    notifier = Notifier(str(notify_socket.path))
    assert notifier.notify(READY=1, STATUS="up")
    assert notify_socket.collect(1) == [{"READY": "1", "STATUS": "up"}]
    notifier.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"scratchwatch-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        assert Notifier("@" + name).notify(WATCHDOG=1)
        server.settimeout(1)
        assert server.recv(100) == b"WATCHDOG=1"
    finally:
        server.close()


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier.from_environment().notify(READY=1)


def test_watchdog_timeout_is_only_for_the_named_pid() -> None:
    assert watchdog_timeout_s({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 3.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_timeout_s({}) is None


def test_pings_only_while_every_stage_reports(notify_socket: NotifySocket) -> None:
    watchdog = ServiceWatchdog(Notifier(str(notify_socket.path)), ["inference", "incidents"], timeout_s=0.6)
    watchdog.on_ready()
    assert "READY" in notify_socket.collect(0.2)[0]
    for _ in range(4):  # both stages beat: a ping every timeout/3
        watchdog.on_event("inference", "heartbeat")
        watchdog.on_event("incidents", "heartbeat")
        watchdog.on_tick()
        time.sleep(0.21)
    assert watchdog.pings >= 3
    before = watchdog.pings
    deadline = time.monotonic() + 1.0  # only incidents beats now: inference is stalled
    while time.monotonic() < deadline:
        watchdog.on_event("incidents", "heartbeat")
        watchdog.on_tick()
        time.sleep(0.05)
    assert watchdog.stalled() == ["inference"]
    assert watchdog.pings <= before + 1  # at most the ping due before stall_s (0.3 s) ran out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _camera_clip(tmp_path: Path) -> Path:
    """30 s at 10 fps, paced in real time: the camera outlives the test."""
    return write_clip(tmp_path / "cam.mp4", 300, [Mark(0, 5, (100, 100, 20, 20))], size=(160, 120))


def _scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value, from the daemon's real endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def test_run_under_a_fake_systemd_pings_and_stops_pinging_for_a_stalled_stage(
    tmp_path: Path, red_model: Path, notify_socket: NotifySocket, capsys: pytest.CaptureFixture[str]
) -> None:
    """One daemon, five checks: the watchdog protocol, the metrics endpoint, `status`, logs fit for
    journald, and a camera password that appears in no log line, metric or process command line."""
    config = tmp_path / "config.yaml"
    port = _free_port()
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "cameras": [{"id": "cam", "source": str(_camera_clip(tmp_path)), "fps": 5, "realtime": True},
                    {"id": "door", "source": f"rtsp://admin:{SECRET}@127.0.0.1:{_free_port()}/stream"}],  # nobody listens
        "detector": {"model": str(red_model), "provider": "cpu", "threads": 1, "car_gate": "off"},
        "metrics": {"port": port},
    }))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "3000000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "--config", str(config), "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            ready = notify_socket.wait_for("READY", 60)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:]) from None
        pids = dict((name, int(pid)) for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", ready["STATUS"]))
        assert set(pids) == {"inference", "incidents"}
        pings = [m for m in notify_socket.collect(3.5) if "WATCHDOG" in m]
        assert len(pings) >= 2, "a ping every WatchdogSec/3 while the stages make progress"
        metrics = _scrape(port)
        assert metrics['scratchwatch_frames_analysed_total{camera="cam"}'] > 0
        assert metrics['scratchwatch_frames_captured_total{camera="cam"}'] >= metrics['scratchwatch_frames_analysed_total{camera="cam"}']
        assert metrics['scratchwatch_camera_up{camera="cam"}'] == 1
        assert 0 <= metrics["scratchwatch_frames_in_flight"] <= 10, "nothing piles up between the stages"
        assert metrics["scratchwatch_inference_batch_seconds_count"] > 0
        for stage in ("inference", "incidents"):
            assert time.time() - metrics[f'scratchwatch_stage_last_heartbeat_timestamp_seconds{{stage="{stage}"}}'] < 3
        assert metrics["scratchwatch_retention_incidents_deleted_total"] == 0
        assert metrics['scratchwatch_camera_up{camera="door"}'] == 0
        assert not any(SECRET in key for key in metrics)
        for pid in (proc.pid, *pids.values()):
            assert SECRET.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert main(["--config", str(config), "status"]) == 0
        table = capsys.readouterr().out
        assert re.search(r"^cam\s+up\s+\d+\.\d s ago", table, re.M) and re.search(r"^inference\s+\d+\.\d s ago", table, re.M), table

        os.kill(pids["inference"], signal.SIGSTOP)  # a stage stuck in a call: alive, no progress
        try:
            notify_socket.collect(2.5)  # stall_s = 1.5 s, plus a ping that was already due
            stalled = [m for m in notify_socket.collect(3) if "WATCHDOG" in m]
            assert stalled == [], "no ping while a stage is stalled: systemd would restart the service"
        finally:
            os.kill(pids["inference"], signal.SIGCONT)
        assert any("WATCHDOG" in m for m in notify_socket.collect(3)), "pings resume with the stage"

        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING", 10)
        assert proc.wait(60) == 0
        logs = proc.stderr.read()
        assert "\x1b[" not in logs, "no ANSI colours when stderr is not a terminal (journald)"
        assert "camera door (rtsp://admin:***@127.0.0.1" in logs and SECRET not in logs
        assert f"metrics on http://127.0.0.1:{port}/metrics" in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _exposure(unit: Path) -> float:
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@needs_analyze
def test_shipped_unit_is_hardened() -> None:
    assert _exposure(UNIT_TEMPLATE) <= MAX_EXPOSURE
    text = UNIT_TEMPLATE.read_text()
    for line in ("Type=notify", "WatchdogSec=", "StateDirectory=scratchwatch", "LogsDirectory=scratchwatch",
                 "SystemCallFilter=@system-service", "CapabilityBoundingSet=\n", "NoNewPrivileges=yes"):
        assert line in text


def test_status_without_a_daemon_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"metrics": {"port": _free_port()}}))
    assert main(["--config", str(config), "status"]) == 1
    assert "no daemon answering on http://127.0.0.1:" in capsys.readouterr().err


def test_install_service_under_a_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "root"
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump({"api": {"token": "s3cret-token"}}))
    monkeypatch.setenv("SCRATCHWATCH_DATABASE_URL", "postgresql://sw:db-password@db/sw")
    assert main(["--config", str(source), "install-service", "--prefix", str(prefix), "--user", "swtest"]) == 0
    out = capsys.readouterr().out
    unit = prefix / "etc/systemd/system/scratchwatch.service"
    assert f"wrote {unit}" in out and "useradd --system" in out and "journalctl -u scratchwatch" in out
    text = unit.read_text()
    exec_start = Path(re.search(r"^ExecStart=(\S+)", text, re.M).group(1))
    assert exec_start.name == "scratchwatch" and os.access(exec_start, os.X_OK)
    assert "User=swtest" in text and "Group=swtest" in text
    for folder in ("var/lib/scratchwatch", "var/log/scratchwatch"):
        assert (prefix / folder).stat().st_mode & 0o777 == 0o750
    env_file = prefix / "etc/scratchwatch/scratchwatch.env"
    assert env_file.stat().st_mode & 0o777 == 0o640
    from pipeline.config import load_settings

    written = (prefix / "etc/scratchwatch/config.yaml").read_text()
    assert "s3cret-token" not in written and "*****" not in written and "db-password" not in written, "secrets stay in the env file"
    monkeypatch.delenv("SCRATCHWATCH_DATABASE_URL")
    settings = load_settings(prefix / "etc/scratchwatch/config.yaml")
    assert settings.detector.model.is_absolute() and str(settings.data_dir) == "/var/lib/scratchwatch"
    assert settings.api.token is None and settings.database.url is None
    env_file.write_text("SCRATCHWATCH_DATABASE_URL=kept\n")
    assert main(["install-service", "--prefix", str(prefix), "--user", "swtest"]) == 0
    assert f"kept existing {env_file}" in capsys.readouterr().out
    assert env_file.read_text() == "SCRATCHWATCH_DATABASE_URL=kept\n", "a re-install keeps the operator's files"
    if SYSTEMD_ANALYZE:
        verify = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr
        assert _exposure(unit) <= MAX_EXPOSURE


MDWE_RUNNER = """
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    sys.exit(77)
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_pipeline_runs_under_memory_deny_write_execute(tmp_path: Path, two_mark_clip: Path) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE is the same rule, and the
    spawned stages inherit it, so the shipped models (car stage and damage) and OpenCV must work
    without W+X memory."""
    repo = Path(__file__).resolve().parents[2]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                      "detector": {"model": str(repo / "models/scratchwatch-yolov5n-480.onnx"), "provider": "cpu",
                                                   "cars": {"model": str(repo / "models/scratchwatch-cars-yolov5n-coco-384.onnx")}}}))
    result = subprocess.run([sys.executable, "-c", MDWE_RUNNER, "--config", str(config), "replay", "--no-progress", str(two_mark_clip)],
                            capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(repo)})
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "60 frames" in result.stdout and ", ok" in result.stdout
