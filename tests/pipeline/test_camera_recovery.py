"""A live camera against a real network stream on loopback: Debian's ffmpeg serves a clip as
MPEG-TS over tcp://, is frozen (a connected stream that sends nothing), killed, and started again
at another resolution. The capture thread notices the stall, reconnects, and frames flow again."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from pipeline.capture import CaptureThread, SourceSpec
from pipeline.config import CaptureConfig
from pipeline.messages import Frame, Message
from pipeline.transport import Receiver, close_context, pull_socket
from tests.pipeline.synthetic import Mark, write_clip

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install ffmpeg; `make system-deps` does)")
RECOVERY_S = 5.0
STALL_S = 2.0
"""open_timeout_s, which is also FFmpeg's read timeout: a stream silent this long is reopened."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StreamServer:
    """ffmpeg looping a clip in real time to the first client of tcp://127.0.0.1:port."""

    def __init__(self, clip: Path, port: int) -> None:
        self.clip, self.port = clip, port
        self.process: subprocess.Popen | None = None

    def start(self, size: str) -> None:
        self.process = subprocess.Popen(
            [FFMPEG, "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip), "-vf", f"scale={size}",
             "-c:v", "mpeg4", "-f", "mpegts", f"tcp://127.0.0.1:{self.port}?listen=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StreamServer]:
    clip = write_clip(tmp_path / "lot.mp4", 50, [Mark(0, 5, (60, 60, 20, 20))], size=(160, 120))
    stream = StreamServer(clip, _free_port())
    yield stream
    stream.kill()


def _wait(receiver: Receiver, condition: Callable[[Message | None], bool], seconds: float) -> float | None:
    """Seconds until ``condition`` holds for a received message (or for None between messages)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition(receiver.recv(50)):
            return time.monotonic() - start
    return None


def test_a_camera_recovers_from_a_stall_and_a_restart_at_another_resolution(server: StreamServer, tmp_path: Path) -> None:
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/frames.sock"
    receiver = Receiver(pull_socket(ctx, endpoint, 10), 10.0, "test")
    control = f"ipc://{tmp_path}/control.sock"
    pull_socket(ctx, control, 10)  # where the EOS goes at the end (nobody acknowledges it here)
    stop = threading.Event()
    policy = CaptureConfig(open_timeout_s=STALL_S)  # the default backoff: 1 s first, 30 s at most
    capture = CaptureThread(SourceSpec("lot", f"tcp://127.0.0.1:{server.port}", fps=5), ctx, endpoint, 4, policy, stop,
                            control=control)
    server.start("160:120")
    try:
        time.sleep(0.3)  # ffmpeg listening
        capture.start()
        assert _wait(receiver, lambda m: isinstance(m, Frame) and m.header.shape == (120, 160, 3), 10) is not None

        server.process.send_signal(signal.SIGSTOP)  # connected, but no frame ever comes
        stalled = _wait(receiver, lambda m: capture.stats.reconnects >= 1 and capture.stats.state in ("lost", "unreachable"), STALL_S + 3)
        assert stalled is not None, "a silent stream is reopened after the read timeout"

        server.kill()
        server.start("320:240")
        back = _wait(receiver, lambda m: isinstance(m, Frame) and m.header.shape == (240, 320, 3), RECOVERY_S)
        assert back is not None, f"no frame within {RECOVERY_S}s of the stream returning"
        # the camera runs in its own process; its thread mirrors the counters every 0.2 s
        assert _wait(receiver, lambda m: capture.stats.state == "connected", 2) is not None
        assert _wait(receiver, lambda m: isinstance(m, Frame), 2) is not None, "and they keep flowing"
    finally:
        stop.set()
        capture.join(10)
        close_context(ctx, 0)
    assert not capture.is_alive()
