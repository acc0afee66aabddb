"""Frame copies between decode and the model's input: counted on the real path, and the count checked
against what the memory itself shows (shared buffers, allocations)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from pipeline.config import Settings
from pipeline.copies import capture_copies
from pipeline.detector import letterbox_into
from pipeline.runner import replay_files

SMALL_SLACK = 65_536
"""Bytes a letterbox may allocate besides pixels: numpy's casting buffers (8192 elements an operand), views."""


def test_a_replay_writes_each_frame_twice_resize_and_tensor_and_copies_it_nowhere_else(
    make_settings: Callable[..., Settings], two_mark_clip: Path
) -> None:
    """capture (thread) -> ipc ZeroMQ -> inference (process, real ONNX Runtime): counts from both ends."""
    report = replay_files(make_settings(detector={"car_gate": "off"}), [two_mark_clip], progress=False)
    frames = report.frames
    assert report.ok and frames == report.files[0].sent > 0
    copies = report.stages["inference"]["frame_copies"]
    # 320x240 frames into a 128 px model: one resize, one conversion into the batch tensor each
    assert copies["sites"] == {"resize": frames, "tensor": frames}
    assert copies["per_frame"] == 2.0 and copies["avoidable_per_frame"] == 0.0
    assert report.files[0].copies == 0  # capture sent the decoded buffers themselves


def test_jpeg_frames_count_their_decode_as_the_one_extra_write(make_settings: Callable[..., Settings], two_mark_clip: Path) -> None:
    report = replay_files(make_settings(detector={"car_gate": "off"}, capture={"frame_encoding": "jpeg"}), [two_mark_clip],
                          progress=False)
    frames = report.frames
    assert report.ok and frames > 0
    copies = report.stages["inference"]["frame_copies"]
    assert copies["sites"] == {"jpeg_decode": frames, "resize": frames, "tensor": frames}
    assert copies["avoidable_per_frame"] == 0.0 and report.files[0].copies == 0


def test_with_the_car_stage_each_model_input_costs_two_writes_at_most(
    make_settings: Callable[..., Settings], two_mark_clip: Path
) -> None:
    report = replay_files(make_settings(), [two_mark_clip], progress=False)
    assert report.ok
    stats = report.stages["inference"]
    copies = stats["frame_copies"]
    inputs = stats["car_inferences"] + stats["damage_inferences"]  # the car stage's frames, then every crop
    assert stats["damage_inferences"] > 0 and 0 < stats["car_inferences"] <= stats["frames"]  # still frames skip the car stage
    assert copies["sites"]["tensor"] == inputs and copies["sites"].get("resize", 0) <= inputs
    assert copies["avoidable_per_frame"] == 0.0 and copies["per_frame"] <= round(2 * inputs / stats["frames"], 3)  # reported to 3 places


def test_letterbox_allocates_no_canvas_only_the_resized_image() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    out = np.empty((3, 480, 480), np.float32)
    letterbox_into(frame, out)  # first call: imports and caches out of the measurement
    resized_bytes = 480 * 270 * 3
    assert allocated_by(lambda: letterbox_into(frame, out)) <= resized_bytes + SMALL_SLACK
    at_size = frame[:480, :480]  # a crop already at the network size: not even a resize
    assert allocated_by(lambda: letterbox_into(at_size, out)) <= SMALL_SLACK


def test_capture_counts_the_copies_pyzmq_and_encode_would_make() -> None:
    camera = np.zeros((720, 1280, 3), np.uint8)
    assert capture_copies(camera) == 0
    assert capture_copies(camera[:, ::2]) == 1  # not contiguous: encode_frame copies it
    assert capture_copies(np.zeros((64, 64, 3), np.uint8)) == 1  # under zmq.COPY_THRESHOLD: pyzmq copies
    assert shared_after_send(camera) and not shared_after_send(np.zeros((64, 64, 3), np.uint8))


def allocated_by(work: Callable[[], object]) -> int:
    """Peak bytes traced while ``work`` runs (numpy and OpenCV's numpy allocator report to tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def shared_after_send(image: np.ndarray) -> bool:
    """Whether the frame received over inproc (copy=False both ends) is the sender's own buffer."""
    ctx = zmq.Context()
    try:
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind("inproc://copies")
        push.connect("inproc://copies")
        push.send(image, copy=False)
        received = np.frombuffer(pull.recv(copy=False).buffer, np.uint8)
        return bool(np.shares_memory(received, image))
    finally:
        ctx.destroy(linger=0)
