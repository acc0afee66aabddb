"""Typed settings of the pipeline, loaded from one YAML file.

Every section is its own pydantic model with ``extra="forbid"``, so a typo in ``config.yaml``
stops the daemon at start with the key's path instead of being ignored until a camera misbehaves
at 3 a.m. ``config.yaml`` at the repository root is the documented default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

CONFIG_ENV = "SCRATCHWATCH_CONFIG"
DATABASE_URL_ENV = "SCRATCHWATCH_DATABASE_URL"
DATA_DIR_ENV = "SCRATCHWATCH_DATA_DIR"
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
"""The repository's documented default, used when neither --config nor ./config.yaml exists."""

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class ConfigError(Exception):
    """The config file cannot be read or does not validate; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class CameraConfig(_Section):
    id: str = Field(title="Camera id", description="Unique name; stored with every incident and used in snapshot paths.")
    source: str | int = Field(
        title="Source",
        description="Video file path, rtsp:// or http(s):// URL, or a device index (integer) such as 0.",
    )
    fps: float | None = Field(
        default=5.0,
        gt=0,
        title="Analysed frames per second",
        description="Target rate of frames sent to the detector (by media time for files, wall clock for live). "
        "null analyses every frame.",
    )
    realtime: bool = Field(
        default=True,
        title="Pace files in real time",
        description="For file sources in `run`: read at the file's own frame rate, like a camera. Ignored for live sources.",
    )
    enabled: bool = Field(default=True, title="Enabled", description="false keeps the entry but does not open the source.")

    @field_validator("id")
    @classmethod
    def _id_chars(cls, value: str) -> str:
        if not CAMERA_ID.match(value):
            raise ValueError("use letters, digits and . _ : - (must start with a letter or digit)")
        return value

    @property
    def is_live(self) -> bool:
        """Live sources (URLs, devices) may drop frames; files never do."""
        return is_live_source(self.source)


class CaptureConfig(_Section):
    reconnect_initial_s: float = Field(
        default=1.0, gt=0, title="First reconnect delay", description="Seconds before the first reconnect attempt of a live source."
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, title="Longest reconnect delay", description="The exponential backoff stops growing here."
    )
    reconnect_jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        title="Reconnect jitter",
        description="Random +/- fraction added to each delay so many cameras do not reconnect in lockstep.",
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, title="Open/read timeout", description="FFmpeg open and read timeout for network sources, seconds."
    )
    frame_encoding: Literal["raw", "jpeg"] = Field(
        default="raw",
        title="Frame encoding on the wire",
        description="raw: decoded pixels (best on one host: ipc, no encoding cost). jpeg: each frame JPEG-encoded by capture "
        "and decoded by inference, for capture nodes on other hosts (bench/bench_bandwidth.py: 720p at 5 fps is 110.6 Mbit/s "
        "raw, 1.7-5.2 Mbit/s as JPEG at quality 85).",
    )
    jpeg_quality: int = Field(
        default=85,
        ge=1,
        le=100,
        title="Wire JPEG quality",
        description="cv2.IMWRITE_JPEG_QUALITY of frames sent with frame_encoding jpeg: lower saves bandwidth, costs detail.",
    )


Z85_KEY = re.compile(r"^[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{40}$")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class CurveConfig(_Section):
    enabled: bool = Field(
        default=False,
        title="CurveZMQ",
        description="Encrypt and authenticate the tcp links (required when transport.host is not loopback). "
        "ipc links are protected by the data folder's permissions instead.",
    )
    key_file: Path | None = Field(
        default=None,
        title="Key pair file",
        description="This node's key pair: the .key_secret file written by `scratchwatch keys generate` (mode 0600). "
        "Relative paths resolve against the config file's folder.",
    )
    server_key: str | None = Field(
        default=None,
        title="Receivers' public key",
        description="Z85 public key of the stages this node sends to (inference, incidents); null: this node's own "
        "key (one key pair for a single-host install).",
    )
    allowed_keys: list[str] = Field(
        default_factory=list,
        title="Allowed senders",
        description="Z85 public keys of the nodes allowed to send to this one; its own key is always allowed. "
        "Any other peer is refused during the handshake and counted.",
    )

    @field_validator("server_key")
    @classmethod
    def _server_key(cls, value: str | None) -> str | None:
        return value if value is None else _z85_key(value)

    @field_validator("allowed_keys")
    @classmethod
    def _allowed_keys(cls, value: list[str]) -> list[str]:
        return [_z85_key(key) for key in value]

    @model_validator(mode="after")
    def _key_file_when_enabled(self) -> CurveConfig:
        if self.enabled and self.key_file is None:
            raise ValueError("key_file is required when enabled (create one with `scratchwatch keys generate`)")
        return self


def _z85_key(value: str) -> str:
    if not Z85_KEY.match(value):
        raise ValueError("not a CurveZMQ public key: 40 Z85 characters, as in the .key file `scratchwatch keys generate` writes")
    return value


class TransportConfig(_Section):
    kind: Literal["ipc", "tcp"] = Field(
        default="ipc",
        title="Transport",
        description="ipc: Unix sockets under <data_dir>/run (one host). tcp: TCP on `host`.",
    )
    host: str = Field(
        default="127.0.0.1", title="TCP host", description="Interface the stages bind to when kind is tcp."
    )
    frames_port: int = Field(
        default=0, ge=0, le=65535, title="Frames port", description="TCP port of capture -> inference; 0 picks a free one."
    )
    detections_port: int = Field(
        default=0, ge=0, le=65535, title="Detections port", description="TCP port of inference -> incidents; 0 picks a free one."
    )
    hwm: int = Field(
        default=4,
        ge=1,
        title="High-water mark",
        description="Messages queued per socket before senders block (files) or drop (live): small keeps latency low.",
    )
    live_send_timeout_s: float = Field(
        default=1.0,
        gt=0,
        title="Live send timeout",
        description="Inference -> incidents, live cameras: detections the incidents stage does not take within this long are "
        "dropped and counted per camera (scratchwatch_detections_dropped_total), so a slow incidents stage never blocks "
        "inference. Replays always wait (lossless).",
    )
    stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        title="Stall timeout",
        description="A stage that sends no heartbeat for this long is stalled: the run fails, naming it (systemd restarts the service).",
    )
    curve: CurveConfig = Field(default_factory=CurveConfig, title="CurveZMQ", description="Encryption and peer keys of tcp links.")
    inference_host: str | None = Field(
        default=None,
        title="Inference host",
        description="`scratchwatch stage capture`: the host whose inference workers receive the frames; null: `host`.",
    )
    incidents_host: str | None = Field(
        default=None,
        title="Incidents host",
        description="`scratchwatch stage capture|inference`: the host of the incidents stage (detections and ends of "
        "streams go there); null: `host`.",
    )
    inference_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        title="Inference workers",
        description="Separate stages: worker N (`scratchwatch stage inference-N`) binds frames_port + N; capture spreads "
        "frames over workers 0..inference_workers-1 (ZeroMQ round-robin, skipping busy or absent workers).",
    )

    @model_validator(mode="after")
    def _curve_across_hosts(self) -> TransportConfig:
        """Anyone who can open the frames socket could inject frames or STOP: off-host means Curve."""
        if self.kind == "tcp" and self.host not in LOOPBACK_HOSTS and not self.curve.enabled:
            raise ValueError(f"host {self.host} is reachable from other machines: set transport.curve.enabled (and a key_file)")
        return self


DEFAULT_MODEL = Path("models/scratchwatch-v4-ensemble-480.onnx")  # the shipped damage model, relative to the repo
DEFAULT_CAR_MODEL = Path("models/scratchwatch-cars-yolov5n-coco-384.onnx")  # the shipped car stage
CarGate = Literal["strict", "photo", "off"]


class MotionConfig(_Section):
    enabled: bool = Field(
        default=True,
        title="Skip the car stage on still frames",
        description="Cameras: a frame that differs from the one the camera's car boxes came from in fewer than min_share of "
        "its thumbnail's pixels reuses those boxes instead of running the car model (a car cannot appear, leave or move "
        "without the picture changing). Damage inspections are scheduled as before.",
    )
    pixel_threshold: int = Field(
        default=25, ge=0, le=255, title="Changed pixel", description="Levels (0-255) any colour channel of a blurred thumbnail pixel must move for it to count as changed."
    )
    min_share: float = Field(
        default=0.002, ge=0, le=1, title="Changed share",
        description="Share of the thumbnail's pixels that must change for the car stage to run again (0: it runs on every frame).",
    )
    refresh_s: float = Field(
        default=10.0, ge=0, title="Longest reuse", description="The car stage runs at least this often per camera, change or not (seconds of the source's clock)."
    )


class CarStageConfig(_Section):
    model: Path = Field(
        default=DEFAULT_CAR_MODEL,
        title="Car model",
        description="ONNX vehicle detector (COCO YOLOv5n, classic head); relative paths resolve against the config file's folder.",
    )
    scoring: Literal["objectness", "class"] = Field(
        default="objectness",
        title="Car score",
        description="objectness: class-agnostic (COCO calls overhead cars 'cell phone'); class: the best of car/truck/bus/motorcycle.",
    )
    conf_threshold: float = Field(default=0.3, ge=0, le=1, title="Car threshold", description="Vehicles scoring below are ignored.")
    iou_threshold: float = Field(default=0.45, ge=0, le=1, title="Car NMS IoU", description="Overlap above which NMS suppresses a car box.")
    min_side: float = Field(
        default=0.04, ge=0, le=1, title="Smallest car", description="Size prior: a car box's longer side must be at least this fraction of the frame's longer side."
    )
    margin: float = Field(
        default=0.08, ge=0, le=1, title="Crop margin", description="Margin added around each car box before cropping, as a fraction of the box size."
    )
    max_zoom: float = Field(
        default=1.0,
        ge=0,
        title="Largest magnification",
        description="A car's crop is grown (more of the frame around it) until the damage model would enlarge it at most this much. "
        "1: never upscale, cars are seen at the camera's own resolution; 0: no limit (small cars fill the model's input).",
    )
    tiles: int = Field(
        default=0,
        ge=0,
        le=4,
        title="Tiles per crop",
        description="Each car crop (or close-up photo) is also shown to the damage model as an N x N grid of tiles "
        "overlapping by 0.2 of a tile (cut as `dataset build --tile` cuts them), so small damage is shown about N times "
        "larger; 1 + N*N damage inferences per inspection. 0 or 1: off. Only for a damage model trained on tiles: "
        "one trained on whole photos loses precision on them (models/MODEL_CARD.md).",
    )
    photo_whole_share: float = Field(
        default=0.3,
        ge=0,
        le=1,
        title="Close-up share (photo gate)",
        description="photo gate: when the largest car covers at least this share of the photo, the photo is looked at whole "
        "(a crop would not magnify it; the damage model was trained on whole photos). 1 crops every car.",
    )
    inspect_every_s: float = Field(
        default=2.0,
        ge=0,
        title="Re-inspection interval",
        description="Cameras: a tracked car that has not moved is checked for damage at least this often (0: every analysed frame). "
        "New or moved cars are checked at once (within inspections_per_frame).",
    )
    inspections_per_frame: int = Field(
        default=1,
        ge=0,
        title="Inspections per frame",
        description="Cameras: at most this many car crops are checked for damage in one frame of one camera (0: no cap). "
        "Due cars beyond it wait for the next frames (new cars first, then the longest uninspected), so a burst of "
        "new cars (a camera starting on a full lot) does not stall the camera: with N due cars every one is checked within "
        "ceil(N / cap) frames, so the inspect_every_s guarantee stretches by that much. 1 (the default): no frame "
        "carries more than one crop, which keeps a frame's latency within one crop (8 cameras, v4, 2 cores: p95 "
        "195-259 ms against 264-302 with no cap, bench/README.md); the same crops run, spread over frames.",
    )
    inspect_moving: Literal["every_frame", "at_rest"] = Field(
        default="at_rest",
        title="Moving cars",
        description="Cameras: every_frame: a car that moved since its last inspection is checked on every frame it moves; "
        "at_rest: once it comes to rest (its box overlaps the previous frame's by IoU >= 0.9), and every inspect_every_s "
        "while it keeps moving. New cars are checked at once either way.",
    )
    motion: MotionConfig = Field(
        default_factory=MotionConfig, title="Still frames", description="Cameras: when the car stage may reuse the last frame's cars."
    )


class DetectorConfig(_Section):
    model: Path = Field(
        default=DEFAULT_MODEL,
        title="ONNX model",
        description="Path of the exported damage detector (a single model or a `scratchwatch ensemble` graph: the "
                    "pipeline runs both alike); relative paths resolve against the config file's folder.",
    )
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto",
        title="Execution provider",
        description="auto: CUDA when the session really gets it, else CPU (the log names the one in use). cpu, cuda: explicit "
        "(cuda fails at start without a GPU). tensorrt: only when set here; engines and the timing cache are kept in "
        "<data_dir>/tensorrt, one profile for batch 1 to max_batch, so only the first start builds them (minutes).",
    )
    precision: Literal["fp32", "fp16"] = Field(
        default="fp32",
        title="Model precision",
        description="fp16: run the half-precision copy of each model, MODEL-fp16.onnx next to it (`scratchwatch fp16 MODEL` "
        "writes it; inputs and outputs stay float32). For GPUs; on CPUs it is slower than fp32.",
    )
    input_type: Literal["float32", "uint8"] = Field(
        default="float32",
        title="Model input type",
        description="uint8: run the uint8-input copy of each model, MODEL-u8.onnx (MODEL-fp16-u8.onnx with precision fp16) "
        "next to it (`scratchwatch u8 MODEL` writes it): the letterbox writes bytes and the model divides by 255 on the "
        "device, so a batch crosses to the GPU 4x smaller. Same detections as float32.",
    )
    io_binding: bool = Field(
        default=True,
        title="I/O binding",
        description="On CUDA/TensorRT, copy each batch to a device buffer once through ONNX Runtime's I/O binding. "
        "Ignored on the CPU.",
    )
    preprocess_workers: int | None = Field(
        default=None,
        ge=1,
        title="Letterbox threads",
        description="Threads that resize and pad the frames of a batch in parallel; null: min(8, cores).",
    )
    conf_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        title="Confidence threshold",
        description="Detections below are discarded; null uses the threshold embedded in the model at export, else 0.25.",
    )
    iou_threshold: float = Field(default=0.45, ge=0, le=1, title="NMS IoU threshold", description="Overlap above which NMS suppresses a box.")
    threads: int | None = Field(
        default=None,
        ge=1,
        title="ONNX Runtime threads",
        description="intra_op threads of the CPU provider; null lets ONNX Runtime choose (all cores).",
    )
    max_batch: int = Field(
        default=4, ge=1, title="Largest batch", description="Frames (or car crops) run together by one model call, up to this many."
    )
    batch_frames: int | None = Field(
        default=None,
        ge=1,
        title="Frames per stage batch",
        description="Frames, from any cameras, the inference stage gathers into one batch (model calls within it still "
        "take at most max_batch inputs); null: max_batch.",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        title="Batch fill wait (ms)",
        description="How long the oldest waiting frame may wait for its batch to fill before the batch runs anyway; "
        "0: run whatever has arrived at once (frames still batch when they queue behind a busy detector).",
    )
    car_gate: CarGate = Field(
        default="strict",
        title="Car gate",
        description="strict: damage is looked for only on cars the car stage finds (no car, no damage: silences asphalt and bay lines). "
        "photo: a frame without a car counts as one car filling it (close-ups; `scratchwatch detect`'s default). off: the whole frame, no car stage.",
    )
    cars: CarStageConfig = Field(default_factory=CarStageConfig, title="Car stage", description="The vehicle detector in front of the damage model.")


class TrackerConfig(_Section):
    iou_threshold: float = Field(
        default=0.3, gt=0, le=1, title="Association IoU", description="A detection continues a track when their boxes overlap at least this much."
    )
    min_hits: int = Field(default=3, ge=1, title="Hits to open", description="Detections a track needs before it becomes an incident.")
    max_missed: int = Field(
        default=10,
        ge=1,
        title="Misses to close",
        description="Analysed frames without a detection after which an incident closes; shorter flickers stay one incident.",
    )


class SnapshotsConfig(_Section):
    enabled: bool = Field(default=True, title="Write snapshots", description="Annotated frame and crop of each incident's best detection.")
    margin: float = Field(default=0.25, ge=0, title="Crop margin", description="Margin around the box in the crop, as a fraction of the box size.")
    jpeg_quality: int = Field(default=90, ge=1, le=100, title="JPEG quality", description="cv2.IMWRITE_JPEG_QUALITY of both snapshots.")


class DatabaseConfig(_Section):
    url: str | None = Field(
        default=None,
        title="Database URL",
        description="SQLAlchemy URL; null means SQLite at <data_dir>/scratchwatch.db. SCRATCHWATCH_DATABASE_URL overrides.",
    )
    spool_max_mb: float = Field(
        default=64.0,
        gt=0,
        title="Spool size limit",
        description="Incident records wait in <data_dir>/spool.db until the database commits them. When the spool and the "
        "snapshots of the records it holds exceed this size, the oldest of those snapshots are deleted, the newest kept "
        "(counted, logged); records are never dropped. A spool file alone beyond it skips new snapshots.",
    )
    spool_reserve_mb: float = Field(
        default=64.0,
        ge=0,
        title="Disk reserve for the spool",
        description="New snapshots are refused while the data folder's disk has less free space than this, so the spool's "
        "records still fit (counted, logged once per episode). 0: no reserve.",
    )
    statement_timeout_s: float = Field(
        default=30.0,
        gt=0,
        title="Statement timeout",
        description="PostgreSQL: a write that takes longer is cancelled and retried from the spool (a hung server "
        "never stalls the writer).",
    )
    connect_timeout_s: float = Field(
        default=10.0,
        ge=1,
        title="Connect timeout",
        description="How long one PostgreSQL connection attempt may take. A database that is down or refuses us "
        "never stops the pipeline: records wait in the spool while the writer retries.",
    )
    flush_timeout_s: float = Field(
        default=30.0, gt=0, title="Flush timeout", description="How long a clean shutdown waits for spooled records to be written; "
        "what is left stays in the spool and is written at the next start."
    )


class RetentionLimits(_Section):
    max_age_days: float | None = Field(
        default=365.0,
        gt=0,
        title="Incident lifetime",
        description="Incidents opened longer ago are deleted with their snapshots, unless kept (`incidents keep ID`). "
        "null keeps them forever.",
    )
    snapshot_max_age_days: float | None = Field(
        default=90.0,
        gt=0,
        title="Snapshot lifetime",
        description="Snapshots of incidents opened longer ago are deleted; the incident row stays. null: as long as the row.",
    )
    max_snapshot_mb: float | None = Field(
        default=None,
        gt=0,
        title="Snapshot disk budget",
        description="Per camera: when its snapshot folder grows beyond this, the oldest snapshots are deleted first "
        "(rows stay). null: no budget.",
    )
    max_incidents: int | None = Field(
        default=None,
        ge=1,
        title="Incident row budget",
        description="Per camera: the disk limit of the incident rows, as a count (a row with its indexes takes about 0.5 kB "
        "on SQLite: 1,000,000 rows ~ 0.5 GB). Beyond it the oldest unkept incidents are deleted with their snapshots. "
        "null: no limit.",
    )


class RetentionConfig(RetentionLimits):
    enabled: bool = Field(default=True, title="Cleanup enabled", description="Run the incremental cleanup inside `scratchwatch run`.")
    interval_s: float = Field(default=600.0, gt=0, title="Cleanup interval", description="Seconds between cleanup passes.")
    batch_size: int = Field(
        default=200,
        ge=1,
        le=10_000,
        title="Cleanup batch",
        description="Incidents deleted or trimmed per transaction: small batches keep each write lock short "
        "(the incidents writer never waits long).",
    )
    orphan_grace_hours: float | None = Field(
        default=24.0,
        gt=0,
        title="Orphaned snapshot grace",
        description="Snapshot files (<uid>_frame/crop/car.jpg, and temporary files a crash left) that no incident row "
        "references and no spooled record may still reference, older than this, are deleted by the cleanup "
        "(in batches of batch_size). null: never.",
    )
    cameras: dict[str, RetentionLimits] = Field(
        default_factory=dict,
        title="Per-camera limits",
        description="Camera id -> limits that replace the defaults above for that camera (keys not given inherit them).",
    )

    def limits(self, camera: str) -> RetentionLimits:
        """The limits of one camera: its override's keys on top of the defaults."""
        override = self.cameras.get(camera)
        base = {name: getattr(self, name) for name in RetentionLimits.model_fields}
        if override is not None:
            base.update({name: getattr(override, name) for name in override.model_fields_set})
        return RetentionLimits(**base)


class MetricsConfig(_Section):
    enabled: bool = Field(default=True, title="Metrics endpoint", description="Serve Prometheus metrics from `scratchwatch run`.")
    host: str = Field(
        default="127.0.0.1",
        title="Metrics host",
        description="Interface of the endpoint; loopback by default (camera ids are in the labels): put a reverse proxy "
        "or an SSH tunnel in front rather than binding 0.0.0.0.",
    )
    port: int = Field(default=9321, ge=0, le=65535, title="Metrics port", description="http://host:port/metrics; 0 picks a free port (logged).")


class SupervisorConfig(_Section):
    restart: bool = Field(
        default=True,
        title="Restart failed stages",
        description="`scratchwatch run`: a stage process that dies, fails or stalls (no heartbeat for transport.stall_timeout_s) "
        "is restarted with backoff, counted and logged; records it had accepted wait in the spool. `replay` never restarts: it fails.",
    )
    restart_initial_s: float = Field(
        default=1.0, gt=0, title="First restart delay", description="Seconds before a failed stage is started again; doubles per restart in the window."
    )
    restart_max_s: float = Field(
        default=30.0, gt=0, title="Longest restart delay", description="The restart backoff stops growing here."
    )
    max_restarts: int = Field(
        default=5,
        ge=0,
        title="Restarts before giving up",
        description="More restarts than this of one stage within restart_window_s is a crash loop: the run fails, naming the stage "
        "and its last error (systemd then decides). 0: never restart.",
    )
    restart_window_s: float = Field(
        default=600.0, gt=0, title="Crash-loop window", description="Seconds over which a stage's restarts are counted against max_restarts."
    )


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", title="Log level", description="Root log level of every stage.")
    rate_limit_s: float = Field(
        default=10.0, ge=0, title="Repeat-log interval", description="Repeated warnings (malformed messages, drops) are logged at most once per interval."
    )


class ReplayConfig(_Section):
    fps: float | None = Field(
        default=None, gt=0, title="Replay frames per second", description="Media-time sampling of `scratchwatch replay`; null analyses every frame."
    )


class ApiConfig(_Section):
    host: str = Field(
        default="127.0.0.1", title="Listen address", description="`scratchwatch serve` binds here; 127.0.0.1 keeps it on this machine."
    )
    port: int = Field(default=8080, ge=1, le=65535, title="Port", description="TCP port of the HTTP API and the web page.")
    token: SecretStr | None = Field(
        default=None,
        title="Bearer token",
        description="Every request but /api/health must send `Authorization: Bearer <token>`. "
        "SCRATCHWATCH_API_TOKEN overrides; `serve` refuses to start without one.",
    )
    user: str = Field(
        default="api",
        min_length=1,
        max_length=255,
        title="Reviewer name",
        description="Recorded as `reviewed_by` on every review made through the API with this token.",
    )


class Settings(_Section):
    data_dir: Path = Field(
        default=Path("data"),
        title="Data folder",
        description="SQLite file, snapshots and ipc sockets live here. SCRATCHWATCH_DATA_DIR overrides.",
    )
    cameras: list[CameraConfig] = Field(default_factory=list, title="Cameras", description="Sources analysed by `scratchwatch run`.")
    capture: CaptureConfig = Field(default_factory=CaptureConfig, title="Capture", description="Reconnect policy of live sources.")
    transport: TransportConfig = Field(default_factory=TransportConfig, title="Transport", description="ZeroMQ links between the stages.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, title="Detector", description="ONNX model and its thresholds.")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, title="Tracker", description="How detections become incidents.")
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig, title="Snapshots", description="JPEG evidence of each incident.")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, title="Database", description="Where incidents are stored.")
    supervisor: SupervisorConfig = Field(
        default_factory=SupervisorConfig, title="Supervisor", description="What `scratchwatch run` does when a stage process fails."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, title="Logging", description="Log level and rate limits.")
    replay: ReplayConfig = Field(default_factory=ReplayConfig, title="Replay", description="Settings of `scratchwatch replay`.")
    api: ApiConfig = Field(default_factory=ApiConfig, title="HTTP API", description="`scratchwatch serve`: the query API and web page.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, title="Metrics", description="Prometheus endpoint of the daemon.")
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, title="Retention", description="How long incidents and snapshots are kept, and the disk they may use."
    )

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> Settings:
        seen: set[str] = set()
        for camera in self.cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} is used twice")
            seen.add(camera.id)
        return self

    @property
    def database_url(self) -> str:
        """The configured URL, or SQLite inside the data folder."""
        from storage.db import default_sqlite_url  # lazy: loading a config needs no SQLAlchemy

        return self.database.url or default_sqlite_url(self.data_dir)


def is_live_source(source: str | int) -> bool:
    """A device index or a network URL is live; anything else is a file path."""
    return isinstance(source, int) or str(source).lower().startswith(LIVE_SCHEMES)


def default_config_path() -> Path:
    """``$SCRATCHWATCH_CONFIG``, else ``./config.yaml``, else the packaged default."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path("config.yaml")
    return local if local.is_file() else PACKAGED_CONFIG


def load_settings(path: str | Path | None = None) -> Settings:
    """Read, validate and resolve a config file; environment overrides apply last."""
    path = Path(path) if path is not None else default_config_path()
    raw = _read_yaml(path)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    return _resolve(settings, path.resolve().parent)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}{where}: invalid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping, not {type(raw).__name__}")
    return raw


def format_validation_error(path: Path, exc: ValidationError) -> str:
    """One line per problem: ``cameras.0.fps: Input should be greater than 0 (got -1)``."""
    lines = [f"config file {path} is invalid:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        got = f" (got {error['input']!r})" if error["type"] != "missing" and not isinstance(error["input"], dict) else ""
        lines.append(f"  {key}: {error['msg']}{got}")
    return "\n".join(lines)


def _resolve(settings: Settings, base: Path) -> Settings:
    """Anchor relative paths at the config's folder and apply the environment overrides."""
    env_dir = os.environ.get(DATA_DIR_ENV)
    data_dir = Path(env_dir).expanduser().resolve() if env_dir else _anchor(settings.data_dir, base)
    update: dict[str, Any] = {"data_dir": data_dir}
    detector = settings.detector
    cars = detector.cars.model_copy(update={"model": _anchor(detector.cars.model, base)})
    update["detector"] = detector.model_copy(update={"model": _anchor(detector.model, base), "cars": cars})
    if settings.transport.curve.key_file is not None:
        curve = settings.transport.curve.model_copy(update={"key_file": _anchor(settings.transport.curve.key_file, base)})
        update["transport"] = settings.transport.model_copy(update={"curve": curve})
    update["cameras"] = [
        camera if camera.is_live else camera.model_copy(update={"source": str(_anchor(Path(str(camera.source)), base))})
        for camera in settings.cameras
    ]
    if os.environ.get(DATABASE_URL_ENV):
        update["database"] = settings.database.model_copy(update={"url": os.environ[DATABASE_URL_ENV]})
    return settings.model_copy(update=update)


def _anchor(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)
