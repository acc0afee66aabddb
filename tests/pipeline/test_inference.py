"""The inference stage on real ZeroMQ sockets with a real ONNX model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from pipeline.car_gate import CarGatedDetector
from pipeline.cars import CarDetector
from pipeline.config import CarStageConfig
from pipeline.detector import Detector
from pipeline.inference import InferenceStage, newest_live_only
from pipeline.messages import Detections, EosHeader, Frame, FrameHeader, StopHeader, decode, encode_control, encode_frame, now_ns
from pipeline.transport import Receiver, pull_socket, push_socket
from tests.pipeline.synthetic import Mark, scene

MARK = Mark(0, 100, (200, 100, 30, 10))


class Harness:
    """frames PUSH -> [stage under test] -> detections PULL.

    Frames go over inproc, where a message is in the receiver's pipe as soon as send returns, so
    a test can queue messages before the stage starts without sleeping; results go over ipc.
    """

    def __init__(self, tmp: Path, model: Path, car_model: Path, hwm: int = 100) -> None:
        self.ctx = zmq.Context()
        frames = f"inproc://frames-{id(self)}"
        self.frames_in = pull_socket(self.ctx, frames, hwm)
        self.sender = push_socket(self.ctx, frames, hwm)
        self.results = pull_socket(self.ctx, f"ipc://{tmp}/d.sock", hwm)
        out = push_socket(self.ctx, f"ipc://{tmp}/d.sock", hwm)
        cars = CarDetector(CarStageConfig(model=car_model), provider="cpu")
        detector = CarGatedDetector(Detector(model, provider="cpu"), cars, "strict", max_batch=4)
        self.stage = InferenceStage(detector, Receiver(self.frames_in, 0.0, "test"), out, max_batch=4)

    def frame(self, camera: str, seq: int, kind: str = "replay", marked: bool = True) -> list:
        img = scene(seq, [MARK] if marked else [])
        hdr = FrameHeader(camera=camera, kind=kind, source=camera, seq=seq, captured_ns=now_ns(),
                          media_time_s=seq / 10 if kind == "replay" else None, shape=img.shape)
        return encode_frame(hdr, img)

    def run_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.stage.run, daemon=True)
        thread.start()
        return thread

    def collect(self, timeout_s: float = 20) -> list:
        """Every message out of the stage up to and including STOP."""
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.results.poll(100):
                out.append(decode(self.results.recv_multipart(copy=False)))
                if isinstance(out[-1], StopHeader):
                    return out
        raise AssertionError(f"no STOP within {timeout_s}s; got {out}")

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@pytest.fixture
def harness(tmp_path: Path, red_model: Path, car_model: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, red_model, car_model)
    yield h
    h.close()


def test_malformed_message_is_counted_and_the_next_frame_is_processed(harness: Harness) -> None:
    thread = harness.run_in_thread()
    harness.sender.send_multipart([b"garbage", b"more garbage"])
    harness.sender.send(b'{"type": "frame", "camera": "x"}')
    harness.sender.send_multipart(harness.frame("cam", 0))
    harness.sender.send_multipart(encode_control(EosHeader(camera="cam", kind="replay", source="cam")))
    harness.sender.send_multipart(encode_control(StopHeader(sources=("cam",))))
    out = harness.collect()
    thread.join(5)
    assert not thread.is_alive()
    detections = [m for m in out if isinstance(m, Detections)]
    assert len(detections) == 1 and detections[0].header.seq == 0
    assert len(detections[0].boxes) == 1 and detections[0].image is not None
    assert harness.stage.receiver.malformed == 2
    assert [type(m).__name__ for m in out] == ["Detections", "EosHeader", "StopHeader"]


def test_live_keeps_only_the_newest_waiting_frame_replay_keeps_all(harness: Harness) -> None:
    for seq in range(10):
        harness.sender.send_multipart(harness.frame("live-cam", seq, kind="live"))
        if seq < 5:
            harness.sender.send_multipart(harness.frame("file", seq))
    for camera, kind in (("live-cam", "live"), ("file", "replay")):
        harness.sender.send_multipart(encode_control(EosHeader(camera=camera, kind=kind, source=camera)))
    harness.sender.send_multipart(encode_control(StopHeader(sources=("live-cam", "file"))))
    # inproc: everything already waits in the stage's queue before it starts draining
    thread = harness.run_in_thread()
    out = harness.collect()
    thread.join(5)
    seqs = {camera: [m.header.seq for m in out if isinstance(m, Detections) and m.header.camera == camera]
            for camera in ("live-cam", "file")}
    assert seqs == {"live-cam": [9], "file": [0, 1, 2, 3, 4]}
    assert harness.stage.dropped == 9
    assert harness.stage.batches >= 2  # max_batch 4: the six frames ran as batches, not one by one


def test_stop_waits_for_the_eos_it_lists(harness: Harness) -> None:
    """STOP may overtake another source's frames (separate sockets); it must not cut them off."""
    thread = harness.run_in_thread()
    harness.sender.send_multipart(encode_control(StopHeader(sources=("a",))))
    harness.sender.send_multipart(harness.frame("a", 0, marked=False))
    harness.sender.send_multipart(encode_control(EosHeader(camera="a", kind="replay", source="a")))
    out = harness.collect()
    thread.join(5)
    assert [type(m).__name__ for m in out] == ["Detections", "EosHeader", "StopHeader"]
    assert out[0].image is None and len(out[0].boxes) == 0


def test_a_frame_the_detector_cannot_take_is_skipped(harness: Harness) -> None:
    thread = harness.run_in_thread()
    bad = np.zeros((0, 5, 3), np.uint8)  # valid message, but nothing to resize
    hdr = FrameHeader(camera="cam", kind="replay", source="cam", seq=0, captured_ns=now_ns(), shape=bad.shape)
    harness.sender.send_multipart(encode_frame(hdr, bad))
    harness.sender.send_multipart(harness.frame("cam", 1))
    harness.sender.send_multipart(encode_control(StopHeader()))
    out = harness.collect()
    thread.join(5)
    assert [m.header.seq for m in out if isinstance(m, Detections)] == [1]
    assert harness.stage.errors == 1


def test_newest_live_only_keeps_order_and_controls() -> None:
    def frame(camera: str, seq: int, kind: str) -> Frame:
        hdr = FrameHeader(camera=camera, kind=kind, source="s", seq=seq, captured_ns=0, shape=(1, 1, 3))
        return Frame(hdr, np.zeros((1, 1, 3), np.uint8))

    eos = EosHeader(camera="b", kind="live", source="s")
    messages = [frame("a", 0, "live"), frame("r", 0, "replay"), frame("b", 0, "live"), eos, frame("a", 1, "live"), frame("r", 1, "replay")]
    kept, dropped = newest_live_only(messages)
    assert dropped == 1
    assert kept == [messages[1], messages[2], eos, messages[4], messages[5]]
