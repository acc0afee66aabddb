"""YOLO detector on ONNX Runtime: letterbox, one session run per batch, decode, NMS.

Used by the inference stage and by ``export.evaluate``; the contract is in ARCHITECTURE.md.
It reads both the ultralytics YOLOv5u head ``[B, 4+nc, N]`` and the classic YOLOv5 head
``[B, N, 5+nc]``, so a model exported by either toolchain drops in without code changes.

The GPU path (issue 11): frames are letterboxed in parallel by a small thread pool (OpenCV's
resize and border and numpy's conversion release the GIL), the whole batch is decoded at once and
suppressed by one compiled NMS call (``cv2.dnn.NMSBoxesBatched``, each image its own group), and
on CUDA/TensorRT the batch goes to the device once through ONNX Runtime's I/O binding into a
device buffer kept per batch size. TensorRT is used only when configured, with its engine and
timing caches in a folder the caller names and an optimisation profile spanning batch 1 to
``max_batch``, so a restart reuses the engines instead of rebuilding them.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from pipeline.copies import COPIES

log = logging.getLogger(__name__)
PAD_VALUE = 114
"""Letterbox grey, as ultralytics pads during training."""
DEFAULT_CONF = 0.25
THRESHOLD_KEY = "scratchwatch_threshold"
"""Metadata key of the operating threshold chosen at export time."""
MAX_NMS_CANDIDATES = 3000
MAX_DETECTIONS = 300
TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
PROVIDER_REQUESTS = {
    "cpu": [CPU],
    "cuda": [CUDA, CPU],
    "tensorrt": [TENSORRT, CUDA, CPU],
    "auto": [CUDA, CPU],  # TensorRT only when configured: a first engine build takes minutes
}
PRECISIONS = ("fp32", "fp16")
INPUT_TYPES = ("float32", "uint8")
"""What the model's input takes: float32 RGB in [0, 1], or the letterboxed bytes (its ``-u8`` copy,
``scratchwatch u8 MODEL``, divides by 255 inside the graph, on the device)."""
MAX_PREPROCESS_WORKERS = 8
"""Default letterbox threads: min(this, cores). On a 16-core H200 host 4 threads took ~9 ms for 16
1080p frames, as long as the GPU run itself; past 8 the GPU is the limit (bench/bench_gpu.py's
``workers`` rows)."""
DEVICE_FAILURE = re.compile(
    r"CUDA|cuda|CUBLAS|cublas|CUDNN|cudnn|TensorRT|out of memory|Failed to allocate memory|BFCArena|device-side",
)
"""What an ONNX Runtime error says when the GPU, not the frame, failed (CUDA error, out of memory)."""


class ModelMismatchError(ValueError):
    """The model's output or metadata does not fit what the pipeline decodes; the message names the file."""


def is_device_failure(exc: BaseException) -> bool:
    """A GPU failure (a CUDA/cuDNN/TensorRT error, out of device memory) or host memory exhausted:
    retrying frame by frame cannot help, the stage must fail at once. ONNX Runtime raises these as
    its own ``Fail``/``RuntimeException``/``EPFail`` whose message names CUDA or the allocator."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__module__.startswith("onnxruntime") and bool(DEVICE_FAILURE.search(str(exc)))


def model_variant(path: str | Path, precision: str, input_type: str = "float32") -> Path:
    """The file a precision and input type run: the model itself (fp32, float32), its ``-fp16`` copy
    (``scratchwatch fp16 MODEL``), its ``-u8`` copy (``scratchwatch u8 MODEL``), or ``-fp16-u8``
    (``scratchwatch u8 MODEL-fp16.onnx``), next to it. A name already carrying a suffix keeps it."""
    path = Path(path)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
    if input_type not in INPUT_TYPES:
        raise ValueError(f"unknown input type {input_type!r}: use one of {INPUT_TYPES}")
    stem = path.stem
    u8 = stem.endswith("-u8")
    stem = stem[:-3] if u8 else stem
    fp16 = stem.endswith("-fp16")
    stem = stem[:-5] if fp16 else stem
    fp16, u8 = fp16 or precision == "fp16", u8 or input_type == "uint8"
    return path.with_name(f"{stem}{'-fp16' if fp16 else ''}{'-u8' if u8 else ''}{path.suffix}")


def preprocess_workers(requested: int | None) -> int:
    """Letterbox threads: as configured, else min(MAX_PREPROCESS_WORKERS, cores) (8 on a GPU host)."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_PREPROCESS_WORKERS, cores))


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
        *,
        workers: int | None = None,
        io_binding: bool = True,
        max_batch: int = 1,
        cache_dir: Path | None = None,
    ) -> None:
        """``workers``: letterbox threads (None: min(8, cores)); ``io_binding``: on CUDA/TensorRT the
        batch goes to a device buffer once per run (the CPU path never binds); ``max_batch``: the
        largest batch, TensorRT's profile; ``cache_dir``: TensorRT's engine and timing caches."""
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"detector model {self.model_path} not found")
        if provider not in PROVIDER_REQUESTS:
            raise ValueError(f"unknown provider {provider!r}: use one of {sorted(PROVIDER_REQUESTS)}")
        self.iou_threshold = iou_threshold
        self.model_sha256 = hashlib.sha256(self.model_path.read_bytes()).hexdigest()
        self.session = _session(self.model_path, provider, threads, max_batch, cache_dir)
        self.providers: list[str] = self.session.get_providers()
        _check_provider(provider, self.providers, self.model_path)
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.batch_dynamic = not isinstance(model_input.shape[0], int)
        self.input_dtype: type = np.uint8 if model_input.type == "tensor(uint8)" else np.float32
        """uint8: the model's ``-u8`` copy normalises in the graph; the letterbox writes bytes, 4x fewer to copy."""
        metadata = self.session.get_modelmeta().custom_metadata_map
        try:
            self.imgsz: tuple[int, int] = _imgsz(metadata, model_input.shape)
        except ModelMismatchError as exc:
            raise ModelMismatchError(f"detector model {self.model_path}: {exc}") from None
        self.names: dict[int, str] = _names(metadata)
        self.conf_threshold: float = _conf_threshold(conf_threshold, metadata)
        self.workers = preprocess_workers(workers)
        self._pool: ThreadPoolExecutor | None = None
        on_gpu = self.providers[0] in GPU_PROVIDERS
        self.binding = DeviceBinding(self.session, "cuda") if io_binding and on_gpu else None
        """I/O binding on the GPU (None on the CPU path, or when switched off)."""

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
        """BGR uint8 frames -> (B, 3, H, W) RGB, float32 in [0, 1] (uint8 0-255 for a ``-u8`` model),
        and how each was fitted; a batch is letterboxed by ``workers`` threads, each frame into its
        slice of the batch."""
        height, width = self.imgsz
        batch = np.empty((len(frames), 3, height, width), dtype=self.input_dtype)
        if len(frames) == 1 or self.workers == 1:
            return batch, [letterbox_into(frame, batch[i]) for i, frame in enumerate(frames)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="letterbox")
        return batch, list(self._pool.map(letterbox_into, frames, batch))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The raw head output: one session run for a dynamic batch axis, else one per frame."""
        if self.batch_dynamic or len(batch) == 1:
            return self._run(batch)
        return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.binding is not None:
            return self.binding.run(batch)
        return self.session.run(None, {self.input_name: batch})[0]

    def warm_up(self, batch_sizes: range | list[int]) -> float:
        """Run a blank batch of every size the caller will use (cuDNN picks its kernels, TensorRT
        loads or builds its engine, per shape), so the first frames pay none of it; seconds taken."""
        started = time.perf_counter()
        height, width = self.imgsz
        for size in batch_sizes:
            self.run(np.zeros((size, 3, height, width), dtype=self.input_dtype))
        return time.perf_counter() - started

    def head_layout(self) -> str:
        """'classic' or 'ultralytics', from one blank frame's output; a model fitting neither fails here,
        at start, naming the file (this run also warms the session up)."""
        height, width = self.imgsz
        raw = self.run(np.zeros((1, 3, height, width), dtype=self.input_dtype))
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
        """Raw head output -> per image (N, 6) boxes in network pixels after threshold and NMS.
        A classic head is filtered by objectness first (``decode_classic``)."""
        nc = len(self.names)
        if raw.ndim == 3 and not _is_ultralytics_layout(raw.shape, nc):
            return decode_classic(raw, self.conf_threshold, self.iou_threshold)
        return decode_batch(to_rows(raw, nc), self.conf_threshold, self.iou_threshold)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class DeviceBinding:
    """ONNX Runtime I/O binding: one device input buffer per batch size, filled by one host-to-device
    copy per run; the output is allocated on the device and copied back once.

    ``device`` is ``cuda`` in service; the tests bind on ``cpu``, which runs the same calls."""

    def __init__(self, session: ort.InferenceSession, device: str, device_id: int = 0) -> None:
        self.session, self.device, self.device_id = session, device, device_id
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self._bound: dict[tuple[int, ...], tuple[Any, Any]] = {}

        self.input_dtype: type = np.uint8 if session.get_inputs()[0].type == "tensor(uint8)" else np.float32

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        bound = self._bound.get(batch.shape)
        if bound is None:
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(batch.shape), self.input_dtype, self.device, self.device_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, value)
            binding.bind_output(self.output_name, self.device, self.device_id)
            bound = self._bound[batch.shape] = (value, binding)
        value, binding = bound
        value.update_inplace(batch)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def rerun(self, shape: tuple[int, ...]) -> None:
        """Run again on the batch already on the device, output left there: the device's time alone
        (``bench/bench_gpu.py``); ``run`` must have bound this shape first."""
        self.session.run_with_iobinding(self._bound[tuple(shape)][1])


def letterbox_into(frame: np.ndarray, out: np.ndarray) -> Letterbox:
    """Resize ``frame`` keeping its aspect, pad with grey, write CHW RGB / 255 into a float ``out``,
    or the CHW RGB bytes themselves into a uint8 ``out`` (a ``-u8`` model divides in its graph).

    No intermediate canvas: the resized image (or the frame itself, at the network size) is
    converted straight into its window of ``out`` and only the borders are filled with grey,
    so the pixels are written twice at most (resize, tensor; counted in ``pipeline.copies``).
    Every step is OpenCV or a numpy ufunc, which release the GIL: frames of a batch run in parallel.
    """
    _, height, width = out.shape
    frame_h, frame_w = frame.shape[:2]
    scale = min(height / frame_h, width / frame_w)
    new_w, new_h = round(frame_w * scale), round(frame_h * scale)
    left, top = round((width - new_w) / 2 - 0.1), round((height - new_h) / 2 - 0.1)
    if (new_w, new_h) == (frame_w, frame_h):
        resized = frame
    else:
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        COPIES.note("resize")
    rgb_chw, window = resized[:, :, ::-1].transpose(2, 0, 1), out[:, top : top + new_h, left : left + new_w]
    if out.dtype == np.uint8:
        _fill_border(out, top, left, new_h, new_w, PAD_VALUE)
        np.copyto(window, rgb_chw)
    else:
        _fill_border(out, top, left, new_h, new_w, _PAD)
        np.multiply(rgb_chw, _SCALE, out=window, casting="unsafe")
    COPIES.note("tensor")
    return Letterbox(scale=scale, left=left, top=top, width=frame_w, height=frame_h)


_SCALE = np.float32(1 / 255)
_PAD = np.float32(PAD_VALUE) * _SCALE
"""The grey of the padding as the model sees it (the same float32 the old uint8 canvas gave)."""


def _fill_border(out: np.ndarray, top: int, left: int, inner_h: int, inner_w: int, grey: Any) -> None:
    """``grey`` everywhere in ``out`` (C, H, W) but the image window."""
    out[:, :top] = grey
    out[:, top + inner_h :] = grey
    out[:, top : top + inner_h, :left] = grey
    out[:, top : top + inner_h, left + inner_w :] = grey


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


def decode_batch(rows: np.ndarray, conf_threshold: float, iou_threshold: float) -> list[np.ndarray]:
    """(B, N, 4 + nc) rows -> per image (M, 6) xyxy score cls: threshold, then per-class NMS, best first.

    The batch is thresholded in one vectorised pass; NMS is OpenCV's compiled routine, one call per
    image (one call for the whole batch compares every box with every other image's too, which
    measured 7x slower at 300 candidates an image), never a Python loop over boxes."""
    cls, conf = best_class(rows[:, :, 4:])
    image, anchor = np.nonzero(conf >= conf_threshold)
    return suppress(rows[image, anchor, :4], conf[image, anchor], cls[image, anchor], image, len(rows), iou_threshold)


def decode_classic(raw: np.ndarray, conf_threshold: float, iou_threshold: float) -> list[np.ndarray]:
    """A classic head's (B, N, 5 + nc) output -> what ``decode_batch(to_rows(raw))`` gives, faster:
    rows are filtered by objectness (column 4) first, in one vectorised pass, and only the
    survivors get the objectness x class products and the best class over the nc columns.

    Exact because a YOLO head's objectness and class probabilities are sigmoids in [0, 1]: then
    objectness x p <= objectness in float32 too, so a row under the threshold by objectness is
    under it for every class. (On the COCO car model at 1080p that leaves a few hundred of 170,352
    rows a batch of 16: 108 ms of decode on an H200 host became ~1 ms.)"""
    image, anchor = np.nonzero(raw[:, :, 4] >= conf_threshold)
    picked = raw[image, anchor]
    cls, conf = best_class(picked[:, 4:5] * picked[:, 5:])
    keep = conf >= conf_threshold
    return suppress(picked[keep, :4], conf[keep], cls[keep], image[keep], len(raw), iou_threshold)


def best_class(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., nc) per-class confidences -> the best class of each row and its confidence."""
    if scores.shape[-1] == 1:  # one class (the damage model, the car stage's scores)
        return np.zeros(scores.shape[:-1], np.int64), scores[..., 0]
    cls = scores.argmax(axis=-1)
    return cls, np.take_along_axis(scores, cls[..., None], axis=-1)[..., 0]


def suppress(cxcywh: np.ndarray, conf: np.ndarray, cls: np.ndarray, image: np.ndarray, batch_size: int,
             iou_threshold: float) -> list[np.ndarray]:
    """Candidates over the threshold, in (image, anchor) order -> per image (M, 6) xyxy score cls:
    best first within each image (equal scores keep anchor order), capped at MAX_NMS_CANDIDATES per
    image, then per-class NMS, one compiled call per image."""
    order = np.lexsort((-conf, image))  # stable: equal scores keep anchor order
    image = image[order]
    rank = np.arange(len(image)) - np.searchsorted(image, image)
    order, image = order[rank < MAX_NMS_CANDIDATES], image[rank < MAX_NMS_CANDIDATES]
    cx, cy, w, h = (cxcywh[order, i] for i in range(4))
    dets = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, conf[order], cls[order]], axis=1)
    dets = dets.astype(np.float32, copy=False).reshape(-1, 6)
    parts = np.split(dets, np.searchsorted(image, np.arange(1, batch_size)))
    return [part[nms_keep(part, iou_threshold)] if len(part) > 1 else part for part in parts]


def nms_keep(dets: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the rows NMS keeps, best first; columns past x1 y1 x2 y2 score cls ride along."""
    return _nms_indices(dets[:, :4], dets[:, 4], dets[:, 5].astype(np.int64), iou_threshold)[:MAX_DETECTIONS]


def _nms_indices(xyxy: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The one NMS routine: OpenCV's compiled batched NMS, boxes of different groups never suppress
    each other; the kept indices, best score first."""
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:4] - xyxy[:, :2]], axis=1).astype(np.float64)
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), groups.astype(np.int32), 0.0, iou_threshold)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def provider_options(
    provider: str, cache_dir: Path | None = None, *, input_name: str = "images", imgsz: tuple[int, int] | None = None,
    max_batch: int = 1, fp16: bool = False,
) -> list[tuple[str, dict[str, str]]]:
    """The providers to request, in order, each with its options (pure: no session is made).

    TensorRT keeps its engines and timing cache in ``cache_dir`` and gets one optimisation profile
    from batch 1 to ``max_batch`` (optimised for ``max_batch``) for a model with a dynamic batch
    axis, so every batch size the stage sends fits one engine and a restart rebuilds nothing."""
    options: list[tuple[str, dict[str, str]]] = []
    for name in PROVIDER_REQUESTS[provider]:
        if name == TENSORRT:
            if cache_dir is None:
                raise ValueError("provider 'tensorrt' needs a cache folder for its engines (the data directory's)")
            trt = {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache_dir),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache_dir),
                "trt_fp16_enable": str(fp16),
            }
            if imgsz is not None:
                smallest, largest = (f"{input_name}:{batch}x3x{imgsz[0]}x{imgsz[1]}" for batch in (1, max_batch))
                trt.update(trt_profile_min_shapes=smallest, trt_profile_opt_shapes=largest, trt_profile_max_shapes=largest)
            options.append((name, trt))
        elif name == CUDA:
            options.append((name, {"device_id": "0"}))
        else:
            options.append((name, {}))
    return options


def _session(model_path: Path, provider: str, threads: int | None, max_batch: int = 1,
             cache_dir: Path | None = None) -> ort.InferenceSession:
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
    profile: dict[str, Any] = {}
    if provider == "tensorrt" and TENSORRT in available:
        profile = _trt_profile_input(model_path)
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
    fp16 = model_path.stem.endswith("-fp16")
    requested = [(name, opts) for name, opts in provider_options(provider, cache_dir, max_batch=max_batch, fp16=fp16, **profile)
                 if name in available]
    try:
        return ort.InferenceSession(str(model_path), options, providers=requested)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise RuntimeError(f"detector model {model_path}: ONNX Runtime cannot load it: {exc}") from exc


def _trt_profile_input(model_path: Path) -> dict[str, Any]:
    """The input name and size TensorRT's batch profile needs, read by a CPU session (the runtime
    has no onnx package); {} for a fixed batch axis, which needs no profile."""
    try:
        probe = ort.InferenceSession(str(model_path), providers=[CPU])
    except Exception as exc:
        raise RuntimeError(f"detector model {model_path}: ONNX Runtime cannot load it: {exc}") from exc
    model_input = probe.get_inputs()[0]
    if isinstance(model_input.shape[0], int):
        return {}
    return {"input_name": model_input.name, "imgsz": _imgsz(probe.get_modelmeta().custom_metadata_map, model_input.shape)}


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def _check_provider(provider: str, got: list[str], model_path: Path) -> None:
    """onnxruntime-gpu falls back to CPU silently: refuse that when a GPU was demanded, and always
    name the provider really in use (and the file) at INFO."""
    demanded = {"cuda": CUDA, "tensorrt": TENSORRT}.get(provider)
    if demanded and demanded not in got:
        raise RuntimeError(f"detector model {model_path}: provider {provider!r} requested but the session got {got}")
    log.info("detector %s runs on %s (requested %s; session providers %s)", model_path, got[0] if got else "nothing",
             provider, ", ".join(got))


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
