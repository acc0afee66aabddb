"""The message schema between the stages: the one place that encodes and decodes them.

Every message is multipart; part 0 is a JSON header validated with pydantic, the other parts are
raw buffers sent and received without copies:

- frame:       ``[header, frame bytes]``                 capture -> inference; the bytes are the
               raw pixels (``encoding: raw``) or one JPEG (``encoding: jpeg``, capture nodes on other
               hosts), decoded here to the header's shape, so inference always gets pixels
- detections:  ``[header, (N, 12) float32 rows, frame?]``  inference -> incidents; a row is a
               damage box then the car it lies on (all -1 without one); the frame travels only
               when N > 0, since only incidents need pixels (for snapshots)
- eos:         ``[header]``  a source ended after ``frames`` frames; supervisor -> inference on the
               control channel, then inference -> incidents in order with that source's detections
- stop:        ``[header]``  drain and exit; supervisor -> inference on the control channel, then
               inference -> incidents in-band with the count of detections sent before it;
               incidents acknowledges it (a ``stopping`` event with the count it received),
               which the supervisor relays to inference on the control channel: only then does
               inference close its detections socket (the end never relies on linger)
- event:       ``[header]``  stage -> supervisor: ready, heartbeat (with counters), progress,
               eos (the acknowledgement: every frame of a source arrived), stopping (incidents
               got its STOP), done, error

Control messages never travel on the frames socket: whoever can connect there can send frames,
not end streams (inference ignores and counts EOS/STOP arriving there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SourceKind = Literal["live", "replay"]
FrameEncoding = Literal["raw", "jpeg"]
Side = Annotated[int, Field(ge=0)]
DETECTION_COLUMNS = 12
"""x1 y1 x2 y2 score cls of the damage, then car x1 y1 x2 y2 score track (-1: no car), frame pixels."""
DAMAGE_COLUMNS = 6


class MalformedMessage(ValueError):
    """A message that does not follow this schema; receivers count and skip it."""


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrameHeader(_Header):
    type: Literal["frame"] = "frame"
    camera: str = Field(min_length=1)
    kind: SourceKind
    source: str
    seq: int = Field(ge=0)
    captured_ns: int = Field(ge=0, description="UTC capture time, ns since the epoch")
    media_time_s: float | None = Field(default=None, description="position in the file; None for live sources")
    shape: tuple[Side, Side, Side]
    """(height, width, channels); a negative side is malformed (numpy would read it as "infer this axis")."""
    dtype: Literal["uint8"] = "uint8"
    encoding: FrameEncoding = Field(default="raw", description="payload of the frame message: raw pixels or a JPEG")

    @property
    def captured_at(self) -> datetime:
        return datetime.fromtimestamp(self.captured_ns / 1e9, tz=timezone.utc)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


class DetectionsHeader(_Header):
    type: Literal["detections"] = "detections"
    frame: FrameHeader
    count: int = Field(ge=0)
    model_name: str = ""
    model_sha256: str = ""
    cars: int = Field(default=0, ge=0, description="vehicles the car stage found in the frame")
    inferences: int = Field(default=1, ge=0, description="damage-model inputs (crops or the whole frame) run for it")


class EosHeader(_Header):
    type: Literal["eos"] = "eos"
    camera: str
    kind: SourceKind
    source: str
    error: str | None = Field(default=None, description="why the source ended early, if it did")
    frames: int | None = Field(default=None, ge=0, description="frames the source sent: the end is acknowledged once all arrived")


class StopHeader(_Header):
    type: Literal["stop"] = "stop"
    sources: tuple[str, ...] = Field(default=(), description="cameras whose EOS must arrive before stopping")
    detections: int | None = Field(
        default=None, ge=0, description="detections messages the sender sent before this STOP (inference -> incidents): "
        "the receiver acknowledges the end with how many it got")


class EventHeader(_Header):
    type: Literal["event"] = "event"
    stage: str
    event: Literal["ready", "heartbeat", "progress", "eos", "stopping", "done", "error"]
    data: dict[str, Any] = Field(default_factory=dict)


Header = Annotated[
    Union[FrameHeader, DetectionsHeader, EosHeader, StopHeader, EventHeader], Field(discriminator="type")
]
_HEADER = TypeAdapter(Header)


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    image: np.ndarray


@dataclass(frozen=True)
class Detections:
    header: FrameHeader
    model_name: str
    model_sha256: str
    boxes: np.ndarray
    """(N, 12) float32: x1 y1 x2 y2 score cls, then the car (x1 y1 x2 y2 score track, -1 for none)."""
    image: np.ndarray | None
    """The frame, present exactly when N > 0."""


Message = Union[Frame, Detections, EosHeader, StopHeader, EventHeader]


def now_ns() -> int:
    """Capture timestamps: UTC wall clock, ns since the epoch."""
    return time.time_ns()


def encode_frame(header: FrameHeader, image: np.ndarray, *, jpeg_quality: int = 85) -> list[Any]:
    """Raw: the pixels, without a copy. JPEG (``header.encoding``): one encoded image at ``jpeg_quality``."""
    if image.shape != header.shape or image.dtype != np.uint8:
        raise ValueError(f"frame {image.shape} {image.dtype} does not match its header {header.shape} uint8")
    if header.encoding == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ValueError(f"frame {image.shape}: JPEG encoding failed")
        return [_dump(header), data]
    return [_dump(header), np.ascontiguousarray(image)]


def encode_detections(
    header: FrameHeader, boxes: np.ndarray, image: np.ndarray, *, model_name: str = "", model_sha256: str = "",
    cars: int = 0, inferences: int = 1,
) -> list[Any]:
    """``image`` is the received frame (a view on the zmq buffer), forwarded without a copy.

    ``boxes`` are full rows, or bare (N, 6) damage boxes (no car stage): those get car columns of -1.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim == 2 and boxes.shape[1] == DAMAGE_COLUMNS:
        boxes = np.concatenate([boxes, np.full((len(boxes), DETECTION_COLUMNS - DAMAGE_COLUMNS), -1, np.float32)], axis=1)
    boxes = np.ascontiguousarray(boxes).reshape(-1, DETECTION_COLUMNS)
    detections = DetectionsHeader(
        frame=header, count=len(boxes), model_name=model_name, model_sha256=model_sha256, cars=cars, inferences=inferences
    )
    parts: list[Any] = [_dump(detections), boxes]
    if len(boxes):
        parts.append(image)
    return parts


def encode_control(header: EosHeader | StopHeader | EventHeader) -> list[Any]:
    return [_dump(header)]


def decode(parts: list[Any]) -> Message:
    """Parse a received multipart message (bytes or zmq frames); raise MalformedMessage."""
    if not parts:
        raise MalformedMessage("empty message")
    try:
        header = _HEADER.validate_json(_header_bytes(parts[0]))
    except ValidationError as exc:
        raise MalformedMessage(f"bad header: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
    if isinstance(header, FrameHeader):
        _expect_parts(parts, 2, header.type)
        if header.encoding == "jpeg":
            return Frame(header, _jpeg(parts[1], header.shape))
        return Frame(header, _array(parts[1], header.shape, np.uint8))
    if isinstance(header, DetectionsHeader):
        _expect_parts(parts, 3 if header.count else 2, header.type)
        boxes = _array(parts[1], (header.count, DETECTION_COLUMNS), np.float32)
        image = _array(parts[2], header.frame.shape, np.uint8) if header.count else None
        return Detections(header.frame, header.model_name, header.model_sha256, boxes, image)
    _expect_parts(parts, 1, header.type)
    return header


def _dump(header: _Header) -> bytes:
    return header.model_dump_json().encode()


def _header_bytes(part: Any) -> bytes:
    """Headers are small: copying them is cheaper than anything clever (pydantic wants bytes)."""
    return part.bytes if hasattr(part, "bytes") else bytes(part)


def _buffer(part: Any) -> memoryview | bytes:
    return part.buffer if hasattr(part, "buffer") else part


def _expect_parts(parts: list[Any], count: int, kind: str) -> None:
    if len(parts) != count:
        raise MalformedMessage(f"{kind} message has {len(parts)} parts, expected {count}")


def _jpeg(part: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a JPEG frame; it must decode to exactly the header's shape."""
    buffer = np.frombuffer(_buffer(part), dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR if shape[2] == 3 else cv2.IMREAD_UNCHANGED) if buffer.size else None
    if image is None:
        raise MalformedMessage(f"frame payload of {buffer.size} bytes is not a decodable JPEG")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape != tuple(shape):
        raise MalformedMessage(f"JPEG decodes to {image.shape}, the header says {tuple(shape)}")
    return image


def _array(part: Any, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A read-only view on the received buffer: no copy of the pixels."""
    buffer = _buffer(part)
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(buffer) != expected:
        raise MalformedMessage(f"payload of {len(buffer)} bytes, expected {expected} for {shape} {np.dtype(dtype)}")
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    array.flags.writeable = False  # shared with zmq (and forwarded as is): nobody draws on it
    return array
