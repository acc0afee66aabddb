"""Capture threads: media-time sampling, lossless files, dropping live sources, reconnects."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from pipeline.backoff import Backoff
from pipeline.capture import CaptureThread, SourceSpec, redact, spread_phases
from pipeline.config import CaptureConfig
from pipeline.messages import EosHeader, Frame, decode
from pipeline.runner import Supervisor
from pipeline.transport import pull_socket

UNREACHABLE = "rtsp://127.0.0.1:9/nothing-listens-here"


def read_all(sock: zmq.Socket, timeout_s: float = 30) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(100):
            out.append(decode(sock.recv_multipart(copy=False)))
            if isinstance(out[-1], EosHeader):
                return out
    raise AssertionError("no EOS")


def test_file_is_sampled_by_media_time_losslessly_and_ends_with_an_acknowledged_eos(tmp_path: Path, two_mark_clip: Path) -> None:
    ctx = zmq.Context()
    try:
        sock = pull_socket(ctx, f"ipc://{tmp_path}/f.sock", hwm=1)  # tiny HWM: capture must block, not drop
        control = pull_socket(ctx, f"ipc://{tmp_path}/c.sock", hwm=1)
        stop = threading.Event()
        spec = SourceSpec(camera="lot", source=str(two_mark_clip), fps=4.0)
        thread = CaptureThread(spec, ctx, f"ipc://{tmp_path}/f.sock", 1, CaptureConfig(), stop, control=f"ipc://{tmp_path}/c.sock")
        thread.start()
        time.sleep(0.3)  # let the HWM fill
        frames = [decode(sock.recv_multipart(copy=False)) for _ in range(24)]
        [eos] = read_all(control)
        time.sleep(0.2)
        assert thread.is_alive(), "the thread waits for the acknowledgement before closing its socket"
        thread.acked.set()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        ctx.destroy(linger=0)
    messages = [*frames, eos]
    # 10 fps source, 4 fps target: the first frame of each 0.25 s slot
    assert [f.header.media_time_s for f in frames[:5]] == pytest.approx([0.0, 0.3, 0.5, 0.8, 1.0])
    assert len(frames) == 24 == thread.stats.expected and thread.stats.dropped == 0
    assert [f.header.seq for f in frames] == list(range(24))
    assert {(f.header.camera, f.header.kind, f.header.shape) for f in frames} == {("lot", "replay", (240, 320, 3))}
    assert messages[-1] == EosHeader(camera="lot", kind="replay", source=str(two_mark_clip), frames=24)


def test_paced_sources_are_spread_over_the_sampling_period_and_replays_are_not() -> None:
    specs = [SourceSpec(camera="a", source=UNREACHABLE, fps=5), SourceSpec(camera="replay", source="/x.mp4"),
             SourceSpec(camera="b", source="/lot.mp4", fps=5, realtime=True), SourceSpec(camera="c", source=0, fps=2)]
    assert [(s.camera, s.phase) for s in spread_phases(specs)] == [("a", 0.0), ("replay", 0.0), ("b", pytest.approx(1 / 3)),
                                                                   ("c", pytest.approx(2 / 3))]


def test_a_realtime_source_with_a_phase_sends_that_share_of_a_period_later(tmp_path: Path, two_mark_clip: Path) -> None:
    """Two cameras started together, at 4 fps: b, at phase 0.5, sends each frame 125 ms after a."""
    ctx = zmq.Context()
    stop = threading.Event()
    threads = []
    try:
        sock = pull_socket(ctx, f"ipc://{tmp_path}/f.sock", hwm=100)
        pull_socket(ctx, f"ipc://{tmp_path}/c.sock", hwm=10)
        for camera, phase in (("a", 0.0), ("b", 0.5)):
            spec = SourceSpec(camera=camera, source=str(two_mark_clip), fps=4.0, realtime=True, phase=phase)
            threads.append(CaptureThread(spec, ctx, f"ipc://{tmp_path}/f.sock", 100, CaptureConfig(), stop,
                                         control=f"ipc://{tmp_path}/c.sock"))
        for thread in threads:
            thread.start()
        sent: dict[str, list[int]] = {"a": [], "b": []}
        while min(len(times) for times in sent.values()) < 4:
            assert sock.poll(5000), "a realtime camera stopped sending"
            frame = decode(sock.recv_multipart(copy=False))
            sent[frame.header.camera].append(frame.header.captured_ns)
    finally:
        stop.set()
        for thread in threads:
            thread.acked.set()
            thread.join(5)
        ctx.destroy(linger=0)
    lags = [(b - a) / 1e9 for a, b in zip(sent["a"][:4], sent["b"][:4])]
    assert all(0.08 < lag < 0.2 for lag in lags), lags


def test_live_send_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    """Nobody reads the socket: after the HWM (and OS buffers) fill, frames are dropped at once."""
    ctx = zmq.Context()
    try:
        endpoint = f"ipc://{tmp_path}/l.sock"
        pull_socket(ctx, endpoint, hwm=1)
        thread = CaptureThread(SourceSpec(camera="cam", source=UNREACHABLE), ctx, endpoint, 1, CaptureConfig(), threading.Event(),
                               control=f"ipc://{tmp_path}/c.sock")
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 1)
        sock.connect(endpoint)
        image = np.zeros((480, 640, 3), np.uint8)
        started = time.monotonic()
        sent = [thread.send_live(sock, image) for _ in range(60)]
        elapsed = time.monotonic() - started
    finally:
        ctx.destroy(linger=0)
    assert sent[0] is True
    assert elapsed < 2.0, "a full socket must never make a live camera wait"
    # zmq's I/O thread may still move one queued frame on into the OS buffer, freeing a slot for a
    # later send: drops are the rule once the buffers are full, not every single send
    assert thread.stats.dropped == sent.count(False) > 40 and sent[-10:].count(False) >= 8


def test_backoff_grows_to_its_bound_with_jitter() -> None:
    backoff = Backoff(1.0, 30.0, 0.2, rng=random.Random(1))
    delays = [backoff.next() for _ in range(10)]
    for attempt, delay in enumerate(delays):
        nominal = min(30.0, 2**attempt)
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    assert len({round(d, 6) for d in delays[-4:]}) == 4  # jittered, not lockstep
    backoff.reset()
    assert backoff.next() <= 1.2


def test_redact_masks_url_passwords() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    assert redact(0) == "0"


def test_unreachable_live_camera_does_not_affect_a_file_camera(make_settings, two_mark_clip: Path) -> None:
    settings = make_settings(capture={"reconnect_initial_s": 0.1, "reconnect_max_s": 0.4, "open_timeout_s": 2})
    specs = [SourceSpec(camera="gate", source=UNREACHABLE, fps=5), SourceSpec(camera="lot", source=str(two_mark_clip))]
    supervisor = Supervisor(settings, specs)

    def stop_when_file_done(sup: Supervisor) -> None:
        file_capture = next(c for c in sup.captures if c.spec.camera == "lot")
        live_capture = next(c for c in sup.captures if c.spec.camera == "gate")
        if file_capture.stats.finished and sup.results["lot"].frames == 60 and live_capture.stats.state == "unreachable":
            sup.stop.set()  # the live camera runs in its own process: it may start after the file ended

    report = supervisor.run(stop_when_file_done)
    gate, lot = report.files
    assert (lot.frames, lot.incidents, lot.error) == (60, 2, None)
    assert (gate.frames, gate.error) == (0, None)
    live = next(c for c in supervisor.captures if c.spec.camera == "gate")
    assert live.stats.state == "unreachable" and live.stats.finished
    assert report.ok and report.interrupted


@pytest.fixture
def served_clip(two_mark_clip: Path) -> Iterator[str]:
    """The clip over HTTP on loopback: a live source (by scheme) that FFmpeg reads for real."""
    import functools
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(two_mark_clip.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{two_mark_clip.name}"
    server.shutdown()


@pytest.fixture
def silent_camera() -> Iterator[str]:
    """A camera that accepts the connection and never answers: FFmpeg waits out its open timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/stream"
    listener.close()


def test_a_camera_that_never_answers_does_not_delay_a_working_one(make_settings, served_clip: str, silent_camera: str) -> None:
    """OpenCV serialises FFmpeg's open within a process: each live camera has its own process."""
    settings = make_settings(capture={"open_timeout_s": 5})
    specs = [SourceSpec(camera="silent", source=silent_camera, fps=5), SourceSpec(camera="working", source=served_clip, fps=5)]
    supervisor = Supervisor(settings, specs)
    times: dict[str, float] = {}

    def until_the_working_camera_delivers(sup: Supervisor) -> None:
        times.setdefault("captures started", time.monotonic())
        if sup.results["working"].frames >= 1:
            times.setdefault("first frame", time.monotonic())
            sup.stop.set()

    started = time.monotonic()
    report = supervisor.run(until_the_working_camera_delivers)
    assert times["first frame"] - times["captures started"] < 2.0, times
    assert report.files[0].frames == 0 and report.ok
    assert time.monotonic() - started < 30, "shutdown waited out the silent camera's open at most once"
