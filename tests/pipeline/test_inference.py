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
from pipeline.messages import Detections, EosHeader, EventHeader, Frame, FrameHeader, StopHeader, decode, encode_control, encode_frame, now_ns
from pipeline.transport import Receiver, pull_socket, push_socket
from tests.pipeline.synthetic import Mark, scene

MARK = Mark(0, 100, (200, 100, 30, 10))


class Harness:
    """frames PUSH + control PUSH -> [stage under test] -> detections PULL, with its events kept.

    Frames and control go over inproc, where a message is in the receiver's pipe as soon as send
    returns, so a test can queue messages before the stage starts without sleeping; results go
    over ipc.
    """

    def __init__(self, tmp: Path, model: Path, car_model: Path, hwm: int = 100, batch_wait_ms: float = 0.0) -> None:
        self.ctx = zmq.Context()
        frames, control = f"inproc://frames-{id(self)}", f"inproc://control-{id(self)}"
        self.frames_in = pull_socket(self.ctx, frames, hwm)
        self.sender = push_socket(self.ctx, frames, hwm)
        control_in = pull_socket(self.ctx, control, hwm)
        self.control = push_socket(self.ctx, control, hwm)
        self.results = pull_socket(self.ctx, f"ipc://{tmp}/d.sock", hwm)
        out = push_socket(self.ctx, f"ipc://{tmp}/d.sock", hwm)
        cars = CarDetector(CarStageConfig(model=car_model), provider="cpu")
        detector = CarGatedDetector(Detector(model, provider="cpu"), cars, "strict", max_batch=4)
        self.events: list[tuple[str, dict]] = []
        self.stage = InferenceStage(
            detector, Receiver(self.frames_in, 0.0, "test"), out, max_batch=4,
            control=Receiver(control_in, 0.0, "test control"), notify=lambda event, final=False, **data: self.events.append((event, data)),
            batch_wait_ms=batch_wait_ms,
        )

    def end(self, camera: str, frames: int, kind: str = "replay") -> None:
        """What a capture thread sends when its source ended after ``frames`` frames."""
        self.control.send_multipart(encode_control(EosHeader(camera=camera, kind=kind, source=camera, frames=frames)))

    def stop(self) -> None:
        self.control.send_multipart(encode_control(StopHeader()))

    def frame(self, camera: str, seq: int, kind: str = "replay", marked: bool = True) -> list:
        img = scene(seq, [MARK] if marked else [])
        hdr = FrameHeader(camera=camera, kind=kind, source=camera, seq=seq, captured_ns=now_ns(),
                          media_time_s=seq / 10 if kind == "replay" else None, shape=img.shape)
        return encode_frame(hdr, img)

    def run_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.stage.run, daemon=True)
        thread.start()
        return thread

    def collect(self, timeout_s: float = 20, acknowledge: bool = True) -> list:
        """Every message out of the stage up to and including STOP, which is acknowledged as the
        incidents stage does (through the supervisor, on the control channel) with the count received."""
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.results.poll(100):
                out.append(decode(self.results.recv_multipart(copy=False)))
                if isinstance(out[-1], StopHeader):
                    if acknowledge:
                        received = sum(isinstance(m, Detections) for m in out)
                        self.control.send_multipart(encode_control(EventHeader(stage="incidents", event="stopping", data={"detections": received})))
                    return out
        raise AssertionError(f"no STOP within {timeout_s}s; got {out}")

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


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
    harness.end("cam", 1)
    wait_for(lambda: ("eos", {"camera": "cam", "frames": 1}) in harness.events)
    harness.stop()
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
    harness.end("live-cam", 10, "live")
    harness.end("file", 5)
    # inproc: everything already waits in the stage's queue before it starts draining
    thread = harness.run_in_thread()
    wait_for(lambda: len([e for e, _ in harness.events if e == "eos"]) == 2)
    harness.stop()
    out = harness.collect()
    thread.join(5)
    seqs = {camera: [m.header.seq for m in out if isinstance(m, Detections) and m.header.camera == camera]
            for camera in ("live-cam", "file")}
    assert seqs == {"live-cam": [9], "file": [0, 1, 2, 3, 4]}
    assert harness.stage.dropped == 9
    assert harness.stage.batches >= 2  # max_batch 4: the six frames ran as batches, not one by one


def test_eos_is_acknowledged_and_forwarded_only_once_every_frame_arrived(harness: Harness) -> None:
    """The EOS (control channel) overtakes the source's frames (frames socket): it must wait for them."""
    thread = harness.run_in_thread()
    harness.end("a", 2)
    time.sleep(0.5)
    assert harness.events == [] or all(e != "eos" for e, _ in harness.events)
    harness.sender.send_multipart(harness.frame("a", 0, marked=False))
    harness.sender.send_multipart(harness.frame("a", 1, marked=False))
    wait_for(lambda: ("eos", {"camera": "a", "frames": 2}) in harness.events)
    harness.stop()
    out = harness.collect()
    thread.join(5)
    assert [type(m).__name__ for m in out] == ["Detections", "Detections", "EosHeader", "StopHeader"]
    assert out[2].error is None


def test_control_messages_on_the_frames_socket_are_ignored_and_counted(harness: Harness) -> None:
    """Whoever can connect to the frames socket can send frames, not end the stream."""
    thread = harness.run_in_thread()
    intruder = push_socket(harness.ctx, harness.frames_in.getsockopt_string(zmq.LAST_ENDPOINT), 1)
    intruder.send_multipart(encode_control(StopHeader()))
    intruder.send_multipart(encode_control(EosHeader(camera="a", kind="replay", source="a")))
    harness.sender.send_multipart(harness.frame("a", 0, marked=False))
    wait_for(lambda: harness.stage.frames == 1)
    assert thread.is_alive() and harness.stage.foreign_control == 2
    harness.stop()
    out = harness.collect()
    thread.join(5)
    assert [type(m).__name__ for m in out] == ["Detections", "StopHeader"]


def test_stop_forwards_an_eos_whose_frames_never_came_saying_so(harness: Harness) -> None:
    thread = harness.run_in_thread()
    harness.end("a", 3)
    harness.sender.send_multipart(harness.frame("a", 0, marked=False))
    wait_for(lambda: harness.stage.frames == 1)
    harness.stop()
    out = harness.collect()
    thread.join(5)
    assert [type(m).__name__ for m in out] == ["Detections", "EosHeader", "StopHeader"]
    assert out[1].error == "2 of 3 frames never arrived"


def test_a_frame_the_detector_cannot_take_is_skipped(harness: Harness) -> None:
    thread = harness.run_in_thread()
    bad = np.zeros((0, 5, 3), np.uint8)  # valid message, but nothing to resize
    hdr = FrameHeader(camera="cam", kind="replay", source="cam", seq=0, captured_ns=now_ns(), shape=bad.shape)
    harness.sender.send_multipart(encode_frame(hdr, bad))
    harness.sender.send_multipart(harness.frame("cam", 1))
    wait_for(lambda: harness.stage.frames == 1)
    harness.stop()
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


def test_the_stage_ends_only_once_incidents_acknowledged_the_stop_with_its_count(harness: Harness) -> None:
    """The detections link ends by acknowledgement, like the frames link: the STOP carries how many
    detections were sent, and the stage keeps its socket open until incidents confirms."""
    thread = harness.run_in_thread()
    for seq in range(3):
        harness.sender.send_multipart(harness.frame("a", seq, marked=False))
    harness.end("a", 3)
    wait_for(lambda: ("eos", {"camera": "a", "frames": 3}) in harness.events)
    harness.stop()
    out = harness.collect(acknowledge=False)
    assert out[-1].detections == 3
    time.sleep(0.5)
    assert thread.is_alive(), "no acknowledgement yet: the stage must not close its socket and exit"
    harness.control.send_multipart(encode_control(EventHeader(stage="incidents", event="stopping", data={"detections": 3})))
    thread.join(5)
    assert not thread.is_alive()
    assert harness.stage.stats()["detections_acknowledged"] == 3


def test_an_end_never_acknowledged_fails_the_stage(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import inference

    monkeypatch.setattr(inference, "END_ACK_TIMEOUT_S", 0.5)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            harness.stage.run()
        except BaseException as exc:  # noqa: BLE001 - what the stage process would report
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    harness.stop()
    harness.collect(acknowledge=False)
    thread.join(5)
    assert not thread.is_alive()
    assert len(failure) == 1 and "did not acknowledge the end of the detections stream" in str(failure[0])


@pytest.fixture
def waiting(tmp_path: Path, red_model: Path, car_model: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """A harness whose stage waits ``request.param`` ms for a batch to fill."""
    h = Harness(tmp_path, red_model, car_model, batch_wait_ms=request.param)
    yield h
    h.close()


def outputs(harness: Harness, count: int, timeout_s: float = 20) -> list[tuple[float, object]]:
    """The next ``count`` messages out of the stage, each with the monotonic time it was read."""
    out: list[tuple[float, object]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        assert time.monotonic() < deadline, f"got {len(out)} of {count} messages"
        if harness.results.poll(20):
            out.append((time.monotonic(), decode(harness.results.recv_multipart(copy=False))))
    return out


@pytest.mark.parametrize("waiting", [5000], indirect=True)
def test_frames_of_several_cameras_gather_into_one_batch_that_runs_once_full(waiting: Harness) -> None:
    thread = waiting.run_in_thread()
    waiting.sender.send_multipart(waiting.frame("a", 0))
    time.sleep(0.3)  # the stage holds camera a's frame: its batch is not full
    assert waiting.stage.frames == 0 and len(waiting.stage.pending) == 1
    sent = time.monotonic()
    for camera in ("b", "c", "d"):
        waiting.sender.send_multipart(waiting.frame(camera, 0))
    got = outputs(waiting, 4)
    assert {m.header.camera for _, m in got} == {"a", "b", "c", "d"}
    assert got[-1][0] - sent < 4.0, "a full batch runs at once, not after the wait"
    assert waiting.stage.batches == 1 and waiting.stage.frames == 4
    waiting.stop()
    waiting.collect()
    thread.join(5)


@pytest.mark.parametrize("waiting", [400], indirect=True)
def test_a_batch_that_does_not_fill_runs_once_its_oldest_frame_waited_batch_wait_ms(waiting: Harness) -> None:
    thread = waiting.run_in_thread()
    sent = time.monotonic()
    waiting.sender.send_multipart(waiting.frame("a", 0))
    [(received, detections)] = outputs(waiting, 1)
    assert isinstance(detections, Detections) and detections.header.camera == "a"
    assert 0.4 <= received - sent < 3.0
    wait = waiting.stage.batch_wait
    assert wait.count == 1 and 0.4 <= wait.sum_s < 3.0
    waiting.stop()
    waiting.collect()
    thread.join(5)


@pytest.mark.parametrize("waiting", [10_000], indirect=True)
def test_an_eos_is_never_held_behind_the_batch_wait_and_live_frames_waiting_are_superseded(waiting: Harness) -> None:
    thread = waiting.run_in_thread()
    for seq in range(3):  # separate rounds: the stage already holds the older frames when a newer one comes
        waiting.sender.send_multipart(waiting.frame("live", seq, kind="live"))
        wait_for(lambda: waiting.stage.received["live"] == seq + 1)
    waiting.sender.send_multipart(waiting.frame("file", 0))
    assert [f.header.seq for _, f in waiting.stage.pending if f.header.camera == "live"] == [2]
    sent = time.monotonic()
    waiting.end("file", 1)
    wait_for(lambda: ("eos", {"camera": "file", "frames": 1}) in waiting.events)
    assert time.monotonic() - sent < 5.0, "the EOS flushed the file's waiting frame instead of waiting 10 s"
    waiting.stop()
    out = waiting.collect()
    thread.join(5)
    assert [(type(m).__name__, getattr(m, "camera", None) or getattr(getattr(m, "header", None), "camera", None)) for m in out] == [
        ("Detections", "live"), ("Detections", "file"), ("EosHeader", "file"), ("StopHeader", None)]
    assert out[0].header.seq == 2 and waiting.stage.dropped == 2
