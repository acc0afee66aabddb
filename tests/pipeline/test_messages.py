"""Message schema: round trips without copies, and precise MalformedMessage errors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import zmq

from pipeline.messages import (
    Detections,
    EosHeader,
    Frame,
    FrameHeader,
    MalformedMessage,
    StopHeader,
    decode,
    encode_control,
    encode_detections,
    encode_frame,
)


def header(shape: tuple[int, int, int] = (4, 6, 3), **overrides: object) -> FrameHeader:
    fields: dict = dict(camera="cam", kind="replay", source="/v.mp4", seq=7, captured_ns=1_700_000_000_000_000_000,
                        media_time_s=1.5, shape=shape)
    fields.update(overrides)
    return FrameHeader(**fields)


def image(shape: tuple[int, int, int] = (4, 6, 3)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)


def over_zmq(parts: list) -> list:
    """Send through a real inproc PUSH/PULL pair and receive as zmq frames (copy=False)."""
    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        endpoint = f"inproc://messages-{uuid.uuid4().hex}"  # inproc names are released asynchronously
        pull.bind(endpoint)
        push.connect(endpoint)
        push.send_multipart(parts, copy=False)
        return pull.recv_multipart(copy=False)
    finally:
        push.close(0)
        pull.close(0)


def test_frame_round_trip_is_a_view_on_the_received_buffer() -> None:
    message = decode(over_zmq(encode_frame(header(), image())))
    assert isinstance(message, Frame)
    assert message.header == header()
    np.testing.assert_array_equal(message.image, image())
    assert not message.image.flags.owndata and not message.image.flags.writeable
    assert message.header.captured_at.isoformat() == "2023-11-14T22:13:20+00:00"


def test_detections_carry_the_frame_only_when_there_are_boxes() -> None:
    boxes = np.array([[1, 2, 3, 4, 0.9, 0, 0, 0, 10, 10, 0.8, 7]], np.float32)  # damage, then its car (track 7)
    parts = encode_detections(header(), boxes, image(), model_name="m.onnx", model_sha256="ab", cars=2, inferences=2)
    assert len(parts) == 3
    message = decode(over_zmq(parts))
    assert isinstance(message, Detections)
    np.testing.assert_array_equal(message.boxes, boxes)
    bare = decode(over_zmq(encode_detections(header(), boxes[:, :6], image())))  # no car stage: car columns are -1
    np.testing.assert_array_equal(bare.boxes, np.concatenate([boxes[:, :6], np.full((1, 6), -1, np.float32)], axis=1))
    np.testing.assert_array_equal(message.image, image())
    assert (message.model_name, message.model_sha256) == ("m.onnx", "ab")
    empty = encode_detections(header(), np.zeros((0, 6), np.float32), image())
    assert len(empty) == 2
    decoded = decode(over_zmq(empty))
    assert decoded.image is None and decoded.boxes.shape == (0, 12)


def test_control_messages_round_trip() -> None:
    eos = EosHeader(camera="cam", kind="live", source="rtsp://x", error="boom")
    stop = StopHeader(sources=("a", "b"))
    assert decode(over_zmq(encode_control(eos))) == eos
    assert decode(over_zmq(encode_control(stop))) == stop


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([], "empty message"),
        ([b"\xff\xfe not json"], "bad header"),
        ([b'{"type": "frame"}'], "bad header"),
        ([b'{"type": "nonsense"}'], "bad header"),
        ([encode_frame(header(), image())[0]], "frame message has 1 parts, expected 2"),
        ([encode_frame(header(), image())[0], b"short"], "payload of 5 bytes, expected 72"),
        ([encode_control(StopHeader())[0], b"extra"], "stop message has 2 parts, expected 1"),
        (encode_detections(header(), np.zeros((2, 6), np.float32), image())[:2], "detections message has 2 parts"),
    ],
)
def test_malformed_messages_raise_a_specific_error(parts: list, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(parts)


def test_header_validation() -> None:
    with pytest.raises(ValueError):
        header(seq=-1)
    with pytest.raises(ValueError):
        encode_frame(header(shape=(2, 2, 3)), image())
