"""YOLO detector on ONNX Runtime: letterbox, one session run per batch, decode, NMS.

Used by the inference stage and by ``export.evaluate``; the contract is in ARCHITECTURE.md.
It reads both the ultralytics YOLOv5u head ``[B, 4+nc, N]`` and the classic YOLOv5 head
``[B, N, 5+nc]``, so a model exported by either toolchain drops in without code changes.
"""

from __future__ import annotations

import ast
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)
PAD_VALUE = 114
"""Letterbox grey, as ultralytics pads during training."""
DEFAULT_CONF = 0.25
THRESHOLD_KEY = "scratchwatch_threshold"
"""Metadata key of the operating threshold chosen at export time."""
MAX_NMS_CANDIDATES = 3000
MAX_DETECTIONS = 300
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PROVIDER_REQUESTS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "auto": [*GPU_PROVIDERS, "CPUExecutionProvider"],
}


class ModelMismatchError(ValueError):
    """The model's output or metadata does not fit what the pipeline decodes; the message names the file."""


@dataclass(frozen=True)
class Letterbox:
    """How one frame was fitted into the network input, to map boxes back."""

    scale: float
    left: int
    top: int
    width: int
    height: int

    def to_frame(self, dets: np.ndarray) -> np.ndarray:
        """(N, 6) detections in network pixels -> a copy in frame pixels, clipped to the frame."""
        out = dets.copy()
        out[:, :4] = (dets[:, :4] - np.array([self.left, self.top] * 2, dtype=np.float32)) / self.scale
        out[:, 0:4:2] = out[:, 0:4:2].clip(0, self.width)
        out[:, 1:4:2] = out[:, 1:4:2].clip(0, self.height)
        return out


class Detector:
    """An ONNX YOLO model with its pre- and post-processing."""

    def __init__(
        self,
        model_path: str | Path,
        provider: str = "auto",
        conf_threshold: float | None = 0.25,
        iou_threshold: float = 0.45,
        threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"detector model {self.model_path} not found")
        if provider not in PROVIDER_REQUESTS:
            raise ValueError(f"unknown provider {provider!r}: use one of {sorted(PROVIDER_REQUESTS)}")
        self.iou_threshold = iou_threshold
        self.model_sha256 = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
        self.session = _session(self.model_path, provider, threads)
        self.providers: list[str] = self.session.get_providers()
        _check_provider(provider, self.providers, self.model_path)
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.batch_dynamic = not isinstance(model_input.shape[0], int)
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.imgsz: tuple[int, int] = _imgsz(metadata, model_input.shape)
        except ModelMismatchError as exc:
            raise ModelMismatchError(f"detector model {self.model_path}: {exc}") from None
        self.names: dict[int, str] = _names(metadata)
        self.conf_threshold: float = _conf_threshold(conf_threshold, metadata)

    @property
    def name(self) -> str:
        return self.model_path.name

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame an (N, 6) float32 array: x1 y1 x2 y2 score cls in that frame's pixels."""
        if not frames:
            return []
        batch, letterboxes = self.preprocess(frames)
        return [box.to_frame(dets) for box, dets in zip(letterboxes, self.decode(self.run(batch)))]

    def preprocess(self, frames: list[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """BGR uint8 frames -> (B, 3, H, W) float32 RGB in [0, 1], and how each was fitted."""
        height, width = self.imgsz
        batch = np.empty((len(frames), 3, height, width), dtype=np.float32)
        boxes = [letterbox_into(frame, batch[i]) for i, frame in enumerate(frames)]
        return batch, boxes

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw head output: one session run for a dynamic batch axis, else one per frame."""
        if self.batch_dynamic or len(batch) == 1:
            return self.session.run(None, {self.input_name: batch})[0]
        return np.concatenate([self.session.run(None, {self.input_name: batch[i : i + 1]})[0] for i in range(len(batch))])

    def head_layout(self) -> str:
        """'classic' or 'ultralytics', from one blank frame's output; a model fitting neither fails here,
        at start, naming the file (this run also warms the session up)."""
        height, width = self.imgsz
        raw = self.run(np.zeros((1, 3, height, width), dtype=np.float32))
        nc = len(self.names)
        if raw.ndim == 3 and raw.shape[2] == 5 + nc:
            return "classic"
        if raw.ndim == 3 and raw.shape[1] == 4 + nc:
            return "ultralytics"
        raise ModelMismatchError(
            f"detector model {self.model_path}: output {list(raw.shape)} matches neither YOLO head for {nc} classes "
            f"([B, N, {5 + nc}] classic or [B, {4 + nc}, N] YOLOv5u): check its 'names' metadata"
        )

    def decode(self, raw: np.ndarray) -> list[np.ndarray]:
        """Raw head output -> per image (N, 6) boxes in network pixels after threshold and NMS."""
        rows = to_rows(raw, len(self.names))
        return [nms(candidates(image_rows, self.conf_threshold), self.iou_threshold) for image_rows in rows]


def letterbox_into(frame: np.ndarray, out: np.ndarray) -> Letterbox:
    """Resize ``frame`` keeping its aspect, pad with grey, write CHW RGB / 255 into ``out``."""
    _, height, width = out.shape
    frame_h, frame_w = frame.shape[:2]
    scale = min(height / frame_h, width / frame_w)
    new_w, new_h = round(frame_w * scale), round(frame_h * scale)
    left, top = round((width - new_w) / 2 - 0.1), round((height - new_h) / 2 - 0.1)
    canvas = np.full((height, width, 3), PAD_VALUE, dtype=np.uint8)
    resized = frame if (new_w, new_h) == (frame_w, frame_h) else cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas[top : top + new_h, left : left + new_w] = resized
    np.multiply(canvas[:, :, ::-1].transpose(2, 0, 1), np.float32(1 / 255), out=out, casting="unsafe")
    return Letterbox(scale=scale, left=left, top=top, width=frame_w, height=frame_h)


def to_rows(raw: np.ndarray, num_classes: int) -> np.ndarray:
    """Either head layout -> (B, N, 4 + nc) rows of cx cy w h and per-class confidence."""
    if raw.ndim != 3:
        raise ValueError(f"unexpected detector output shape {raw.shape}: expected 3 dimensions")
    ultralytics = _is_ultralytics_layout(raw.shape, num_classes)
    if ultralytics:
        return raw.transpose(0, 2, 1)
    # classic: class confidence = objectness x class probability
    return np.concatenate([raw[..., :4], raw[..., 4:5] * raw[..., 5:]], axis=2)


def _is_ultralytics_layout(shape: tuple[int, ...], num_classes: int) -> bool:
    """[B, 4+nc, N] vs [B, N, 5+nc]; the class count decides, else the short axis is channels."""
    channels_first = shape[1] == 4 + num_classes
    channels_last = shape[2] == 5 + num_classes
    if channels_first != channels_last:
        return channels_first
    return shape[1] < shape[2]


def candidates(rows: np.ndarray, conf_threshold: float) -> np.ndarray:
    """(N, 4 + nc) rows -> (M, 6) xyxy score cls above the threshold, best first, capped."""
    scores = rows[:, 4:]
    cls = scores.argmax(axis=1)
    conf = scores[np.arange(len(rows)), cls]
    keep = np.flatnonzero(conf >= conf_threshold)
    keep = keep[np.argsort(-conf[keep], kind="stable")[:MAX_NMS_CANDIDATES]]
    cx, cy, w, h = (rows[keep, i] for i in range(4))
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, conf[keep], cls[keep]], axis=1)
    return out.astype(np.float32, copy=False)


def nms(dets: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Per-class NMS (boxes offset by class so classes never suppress each other)."""
    if len(dets) == 0:
        return dets.reshape(0, dets.shape[1] if dets.ndim == 2 else 6)
    return dets[nms_keep(dets, iou_threshold)]


def nms_keep(dets: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the rows NMS keeps, best first; columns past x1 y1 x2 y2 score cls ride along."""
    offset = dets[:, 5:6] * (float(dets[:, :4].max()) + 1)
    shifted = dets[:, :4] + offset
    xywh = np.concatenate([shifted[:, :2], shifted[:, 2:] - shifted[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), dets[:, 4].tolist(), 0.0, iou_threshold)
    return np.asarray(keep, dtype=np.int64).reshape(-1)[:MAX_DETECTIONS]


def _session(model_path: Path, provider: str, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    # Idle worker threads sleep instead of spinning: the cores are shared with capture decoding.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = set(ort.get_available_providers())
    if provider == "auto" and not _nvidia_driver_present():
        available -= set(GPU_PROVIDERS)  # spares onnxruntime-gpu's noisy failed attempt on CPU hosts
    requested = [name for name in PROVIDER_REQUESTS[provider] if name in available]
    try:
        return ort.InferenceSession(str(model_path), options, providers=requested)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise RuntimeError(f"detector model {model_path}: ONNX Runtime cannot load it: {exc}") from exc


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _check_provider(provider: str, got: list[str], model_path: Path) -> None:
    """onnxruntime-gpu falls back to CPU silently; say so, and refuse it when CUDA was demanded."""
    on_gpu = any(name in got for name in GPU_PROVIDERS)
    if provider == "cuda" and not on_gpu:
        raise RuntimeError(f"detector model {model_path}: provider 'cuda' requested but the session got {got}")
    if provider == "auto":
        log.info("detector %s runs on %s", model_path.name, got[0] if got else "nothing")


def _imgsz(metadata: dict[str, str], input_shape: list[Any]) -> tuple[int, int]:
    """ultralytics metadata ``imgsz`` ('[320, 320]'), else the input's fixed H and W; never a guess."""
    if "imgsz" in metadata:
        value = ast.literal_eval(metadata["imgsz"])
        value = [value, value] if isinstance(value, int) else list(value)
        return int(value[0]), int(value[1])
    height, width = input_shape[2:4]
    if isinstance(height, int) and isinstance(width, int):
        return height, width
    raise ModelMismatchError("dynamic input size and no 'imgsz' metadata: export it with `scratchwatch export`")


def _conf_threshold(requested: float | None, metadata: dict[str, str]) -> float:
    """None means the operating point ``scratchwatch export`` embedded in the model, else 0.25."""
    if requested is not None:
        return requested
    return float(metadata.get(THRESHOLD_KEY, DEFAULT_CONF))


def _names(metadata: dict[str, str]) -> dict[int, str]:
    """ultralytics metadata ``names`` ("{0: 'scratch'}"), else one class called 'scratch'."""
    if "names" not in metadata:
        return {0: "scratch"}
    value = ast.literal_eval(metadata["names"])
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    return {int(key): str(name) for key, name in value.items()}
