"""Damage looked for on cars: car stage -> crops -> damage model -> boxes back on the frame.

Why crops: a whole 768x432 frame letterboxed to the damage model's 480 px shrinks a car's
scratch to a few pixels, and lets the model fire on bay lines and asphalt. Cropping each car
(with a margin) from the *full-resolution* frame gives damage many more pixels, and a damage box
must lie on a car (its centre on the car box), which silences everything that is not a car.

The gate is a per-source policy (``detector.car_gate``): ``strict`` (cameras: no car, no damage
looked for), ``photo`` (a photo without a found car, or whose largest car covers
``photo_whole_share`` of it, is looked at whole, so close-ups of a door still work) and ``off`` (the whole frame, the old behaviour).

On cameras, :class:`InspectionScheduler` tracks cars and spends damage inferences on new or
moved cars first; a parked car is re-inspected every ``inspect_every_s`` and, in between, its
last inspection's damage boxes stand for it, so incidents stay continuous.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.cars import CarDetector, centres_inside, crop_to_frame
from pipeline.config import CarGate, DetectorConfig, MotionConfig, TrackerConfig
from pipeline.detector import Detector, model_variant, nms_keep
from pipeline.geometry import box_iou, grow_window, margin_window, tile_grid
from pipeline.messages import DAMAGE_COLUMNS, DETECTION_COLUMNS, FrameHeader
from pipeline.motion import StillFrames, stale, thumbnail
from pipeline.stage import Histogram
from pipeline.tracker import CameraTracker, Track

log = logging.getLogger(__name__)
TENSORRT_CACHE = "tensorrt"
"""TensorRT's engine and timing caches, under the data directory."""
NO_CAR = np.full(DETECTION_COLUMNS - DAMAGE_COLUMNS, -1.0, dtype=np.float32)
"""The car columns of a damage box that lies on no found car."""
MOVED_IOU = 0.8
"""A tracked car whose box overlaps its last inspected box less than this has moved."""
REST_IOU = 0.9
"""With ``inspect_moving: at_rest``, a car whose box overlaps its previous frame's this much has come to rest."""
AFTER_BATCH = object()
"""A held car's boxes come from an inspection earlier in the same batch: read them after it ran."""
CAR_TRACKING = TrackerConfig(iou_threshold=0.3, min_hits=1, max_missed=5)


@dataclass
class FrameResult:
    """What one frame yields: damage rows (N, 12) and the cars (K, 6: box, score, track)."""

    rows: np.ndarray
    cars: np.ndarray
    inferences: int = 0
    """Damage-model inputs (crops or whole frames) run for this frame."""
    car_inferences: int = 0
    """1 when the car stage ran on this frame, 0 when a still frame reused its camera's cars (or the gate is off)."""


@dataclass
class _Plan:
    """For one frame: the cars, which to inspect, and held boxes standing for the others."""

    cars: np.ndarray
    inspect: list[int]
    held: list[tuple[Track, np.ndarray | None | object]] = field(default_factory=list)
    """Tracked cars not inspected in this frame, each with the boxes that stand for it: those of its
    latest inspection as of this frame, or ``AFTER_BATCH`` when that inspection is in an earlier
    frame of the same batch (its result is known only once the batch's crops ran)."""
    tracks: list[Track] | None = None
    """The car tracks (scheduled cameras only), aligned with ``cars``."""
    whole_frame: bool = False
    """Photo gate, a close-up: the frame itself stands in for the car (its damage rows name no car)."""
    found: np.ndarray | None = None
    """With ``whole_frame``: the cars the car stage did find, still reported."""


class InspectionScheduler:
    """Per camera: track cars; a car is due when new, moved, or not inspected for ``every_s``.

    ``per_frame`` caps the inspections of one camera frame (0: no cap). Without it, a frame in
    which several cars appear at once pays every crop at once, and at ~0.1 s per crop (v4 on 2
    cores) that burst, not the mean load, is what breaks a camera's latency. Due cars beyond the
    cap wait for the next frames, new cars first, then the longest uninspected, so none waits
    more than ``ceil(due cars / per_frame)`` frames; a car that waits keeps its held boxes only
    if it has not moved (moved, they no longer lie on it)."""

    def __init__(self, every_s: float, per_frame: int = 0, still: StillFrames | None = None, moving: str = "every_frame") -> None:
        self.every_s, self.per_frame = every_s, per_frame
        self.at_rest = moving == "at_rest"
        """A car that moved is inspected once it comes to rest (and every ``every_s`` while it keeps
        moving) instead of on every frame it moves: a car driving through is blurred, half out of view,
        and leaving; the view worth checking is the one it parks in."""
        self.still = still
        """With still frames on: a car is re-inspected on time only if its pixels changed since its last
        inspection, and at least every ``still.config.refresh_s`` regardless."""
        self.trackers: dict[str, CameraTracker] = {}

    def plan(self, header: FrameHeader, cars: np.ndarray, thumb: np.ndarray | None = None) -> _Plan:
        """``thumb``: the frame's :func:`~pipeline.motion.thumbnail`, with still frames on."""
        tracker = self.trackers.get(header.camera)
        if tracker is None:
            tracker = self.trackers[header.camera] = CameraTracker(CAR_TRACKING)
        dets = np.concatenate([cars[:, :5], np.zeros((len(cars), 1), np.float32)], axis=1)
        tracks = tracker.update(dets, header, None).assigned
        ids = np.array([[t.track_id] for t in tracks], np.float32).reshape(-1, 1)
        plan = _Plan(np.concatenate([cars[:, :5], ids], axis=1), [], tracks=tracks)
        now = frame_time(header)
        due = [i for i, track in enumerate(tracks) if self._due(track.state, cars[i], now, thumb, header.shape[1])]
        for track, car in zip(tracks, cars):
            track.state["last_box"] = car[:4].copy()
        due.sort(key=lambda i: float(tracks[i].state.get("inspected_at", -np.inf)))  # new first, then the longest waiting
        chosen = set(due[: self.per_frame] if self.per_frame else due)
        for index, track in enumerate(tracks):
            if index in chosen:
                track.state.update(inspected_at=now, inspected_box=cars[index, :4].copy(), inspected_thumb=thumb, held=None,
                                   pending=True)
                plan.inspect.append(index)
                continue
            if self._moved(track.state, cars[index]):
                track.state["held"] = None  # deferred after moving: its old boxes are off the car now
            plan.held.append((track, AFTER_BATCH if track.state.get("pending") else track.state.get("held")))
        return plan

    @staticmethod
    def remember(track: Track, rows: np.ndarray) -> None:
        """The damage found on an inspected car, standing for it until its next inspection."""
        track.state.update(held=rows, pending=False)

    def _due(self, state: dict, car: np.ndarray, now: float, thumb: np.ndarray | None = None, frame_width: int = 0) -> bool:
        if "inspected_at" not in state:
            return True
        age = now - float(state["inspected_at"])
        if self._moved(state, car):
            return not self.at_rest or age >= self.every_s or age < 0 or self._resting(state, car)
        if age < self.every_s and age >= 0:
            return False
        before = state.get("inspected_thumb")
        if thumb is None or before is None or stale(age, self.still.config.refresh_s):
            return True
        return self.still.region_changed(before, thumb, car, frame_width)  # unchanged pixels: the same answer again

    @staticmethod
    def _resting(state: dict, car: np.ndarray) -> bool:
        """The car's box barely changed since the previous frame (IoU >= ``REST_IOU``)."""
        last = state.get("last_box")
        return last is not None and float(box_iou(car[None, :4], np.asarray(last)[None])[0, 0]) >= REST_IOU

    @staticmethod
    def _moved(state: dict, car: np.ndarray) -> bool:
        if "inspected_box" not in state:
            return False
        return float(box_iou(car[None, :4], np.asarray(state["inspected_box"])[None])[0, 0]) < MOVED_IOU


def frame_time(header: FrameHeader) -> float:
    """Seconds on the source's own clock: media time for files, capture time for live cameras."""
    return header.media_time_s if header.media_time_s is not None else header.captured_ns / 1e9


class CarGatedDetector:
    """The daemon's and ``detect``'s detection path: one object, three gate policies."""

    def __init__(
        self, damage: Detector, cars: CarDetector | None, gate: CarGate, *, margin: float = 0.08,
        max_batch: int = 4, inspect_every_s: float = 0.0, photo_whole_share: float = 0.3, max_zoom: float = 0.0,
        inspections_per_frame: int = 0, motion: MotionConfig | None = None, inspect_moving: str = "every_frame",
        tiles: int = 0,
    ) -> None:
        if gate != "off" and cars is None:
            raise ValueError(f"car gate {gate!r} needs a car stage")
        self.damage, self.cars, self.gate = damage, cars, gate
        self.margin, self.max_batch, self.photo_whole_share = margin, max_batch, photo_whole_share
        self.max_zoom = max_zoom
        self.tiles = tiles if tiles >= 2 else 0
        """Each window is also inspected as a tiles x tiles grid (0: whole windows only)."""
        self.still = StillFrames(motion) if motion is not None and motion.enabled and gate != "off" else None
        """Cameras: still frames reuse their camera's cars instead of running the car stage."""
        self.scheduler = (InspectionScheduler(inspect_every_s, inspections_per_frame, self.still, inspect_moving)
                          if inspect_every_s > 0 else None)
        self.car_seconds = Histogram()
        """Car-stage time per ``detect`` call (every chunk of the batch): the metrics' car-stage latency."""
        self.damage_seconds = Histogram()
        """Damage-model time per ``detect`` call (every crop or whole frame of the batch)."""

    @property
    def name(self) -> str:
        return self.damage.name

    def detect(self, frames: list[np.ndarray], headers: list[FrameHeader] | None = None) -> list[FrameResult]:
        """Damage rows and cars per frame; ``headers`` (cameras) turn on the inspection scheduler."""
        if not frames:
            return []
        if self.gate == "off":
            return [self._whole_frame(dets) for dets in self._timed(self.damage_seconds, self.damage.detect, frames)]
        found, thumbs, ran = self._find_cars(frames, headers)
        plans = [self._plan(i, frame, found[i], headers, thumbs[i]) for i, frame in enumerate(frames)]
        crops, owners = self._crops(frames, plans)
        crop_dets = self._timed(self.damage_seconds, self.damage.detect, [c for c, _ in crops]) if crops else []
        results = self._assemble(plans, crops, owners, crop_dets)
        for result, car_run in zip(results, ran):
            result.car_inferences = int(car_run)
        return results

    def _find_cars(self, frames: list[np.ndarray], headers: list[FrameHeader] | None) -> tuple[list[np.ndarray], list[np.ndarray | None], list[bool]]:
        """Per frame its cars, its thumbnail (still frames on) and whether the car stage ran on it.

        A still camera frame reuses its reference's cars. Frames are taken in order, so a still
        frame after a changed one of the same camera in the same batch stands on that frame's cars."""
        if self.still is None or headers is None:
            return self._timed(self.car_seconds, self.cars.detect, frames), [None] * len(frames), [True] * len(frames)
        thumbs = [thumbnail(frame) for frame in frames]
        ran: list[bool] = []
        sources: list[int | np.ndarray] = []  # per frame: an index into this batch's car-stage runs, or a camera's reused cars
        new_reference: dict[str, int] = {}  # camera -> the run that made its newest reference in this batch
        for thumb, header in zip(thumbs, headers):
            run = self.still.needs_cars(header.camera, thumb, frame_time(header))
            if run:
                new_reference[header.camera] = sum(ran)
            ran.append(run)
            sources.append(new_reference[header.camera] if header.camera in new_reference else self.still.cars(header.camera))
        try:
            fresh = self._timed(self.car_seconds, self.cars.detect, [f for f, r in zip(frames, ran) if r]) if new_reference else []
        except Exception:
            self.still.forget(set(new_reference))  # no reference without its cars
            raise
        for camera, run in new_reference.items():
            self.still.store(camera, fresh[run])
        found = [fresh[source] if isinstance(source, int) else source for source in sources]
        return found, thumbs, ran

    def windows(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        """The frame windows (x1, y1, x2, y2) the damage model is shown for one photo, without the scheduler.

        Training on these crops (``scratchwatch dataset crops``) shows the model its inputs as the gate will.
        """
        height, width = frame.shape[:2]
        if self.gate == "off":
            return [(0, 0, width, height)]
        plan = self._plan(0, frame, self.cars.detect([frame])[0], None)
        return [view for i in plan.inspect for view in self._views(self._window(plan.cars[i], width, height))]

    def _timed(self, histogram: Histogram, run, images: list[np.ndarray]) -> list[np.ndarray]:
        started = time.perf_counter()
        out = self._chunked(run, images)
        histogram.observe(time.perf_counter() - started)
        return out

    def _plan(self, index: int, frame: np.ndarray, cars: np.ndarray, headers: list[FrameHeader] | None, thumb: np.ndarray | None = None) -> _Plan:
        height, width = frame.shape[:2]
        if self.gate == "photo" and self._close_up(cars, width * height):  # the whole photo is the car
            return _Plan(np.array([[0, 0, width, height, 0, -1]], np.float32), [0], whole_frame=True, found=cars)
        if self.scheduler is not None and headers is not None:
            return self.scheduler.plan(headers[index], cars, thumb)
        with_track = np.concatenate([cars[:, :5], np.full((len(cars), 1), -1, np.float32)], axis=1)
        return _Plan(with_track, list(range(len(cars))))

    def _window(self, car: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
        """The car plus margin, grown so the damage model never magnifies it more than ``max_zoom``."""
        window = margin_window(car, self.margin, width, height)
        if self.max_zoom <= 0:
            return window
        side_h, side_w = (int(np.ceil(s / self.max_zoom)) for s in self.damage.imgsz)
        return grow_window(window, side_w, side_h, width, height)

    def _close_up(self, cars: np.ndarray, area: int) -> bool:
        """No car found, or one so large that cropping it would not magnify it."""
        if not len(cars):
            return True
        largest = float(((cars[:, 2] - cars[:, 0]) * (cars[:, 3] - cars[:, 1])).max())
        return largest >= self.photo_whole_share * area

    def _crops(self, frames: list[np.ndarray], plans: list[_Plan]):
        crops, owners = [], []
        for frame_index, (frame, plan) in enumerate(zip(frames, plans)):
            height, width = frame.shape[:2]
            for car_index in plan.inspect:
                for window in self._views(self._window(plan.cars[car_index], width, height)):
                    crops.append((frame[window[1] : window[3], window[0] : window[2]], window))
                    owners.append((frame_index, car_index))
        return crops, owners

    def _views(self, window: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
        """The window, then (``tiles``) its grid of overlapping tiles, each in frame pixels.

        Why tiles: half the labelled damage covers under 1 % of its photo; a tile shows it about ``tiles``
        times larger at the damage model's input. The frame's NMS merges what two views both found."""
        if not self.tiles:
            return [window]
        x1, y1, x2, y2 = window
        return [window] + [(x1 + a, y1 + b, x1 + c, y1 + d) for a, b, c, d in tile_grid(x2 - x1, y2 - y1, self.tiles)]

    def _assemble(self, plans, crops, owners, crop_dets) -> list[FrameResult]:
        found: list[list[np.ndarray]] = [[] for _ in plans]
        inferences = [0] * len(plans)
        for (frame_index, car_index), (_, window), dets in zip(owners, crops, crop_dets):
            plan = plans[frame_index]
            inferences[frame_index] += 1
            car = plan.cars[car_index]
            on_car = crop_to_frame(dets, window)
            if plan.whole_frame:  # a close-up: every box counts, named with the found car it lies on, if any
                rows = np.concatenate([on_car[:, :DAMAGE_COLUMNS], _cars_under(on_car, _reported_cars(plan))], axis=1)
            else:
                on_car = on_car[centres_inside(on_car, car)]
                rows = np.concatenate([on_car[:, :DAMAGE_COLUMNS], np.repeat(car[None], len(on_car), 0)], axis=1)
            if plan.tracks is not None:
                InspectionScheduler.remember(plan.tracks[car_index], rows)
            found[frame_index].append(rows)
        for plan, rows in zip(plans, found):  # after every inspection of the batch: a car inspected in frame k holds in k+1
            for track, held in plan.held:  # a frame before the inspection keeps the boxes it had, one after gets the new ones
                held = track.state.get("held") if held is AFTER_BATCH else held
                if held is not None:
                    rows.append(held)
        return [
            FrameResult(_merge(rows, self.damage.iou_threshold), _reported_cars(plan), inferences[i])
            for i, (plan, rows) in enumerate(zip(plans, found))
        ]

    def _whole_frame(self, dets: np.ndarray) -> FrameResult:
        rows = np.concatenate([dets[:, :DAMAGE_COLUMNS], np.tile(NO_CAR, (len(dets), 1))], axis=1)
        return FrameResult(rows.astype(np.float32), np.zeros((0, 6), np.float32), 1)

    def _chunked(self, run, images: list[np.ndarray]) -> list[np.ndarray]:
        """One model call per ``max_batch`` images: a frame with 50 cars runs in chunks."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.max_batch):
            out.extend(run(images[start : start + self.max_batch]))
        return out


def _cars_under(dets: np.ndarray, cars: np.ndarray) -> np.ndarray:
    """(N, 6) car columns: the first car each box's centre lies on, else -1."""
    out = np.tile(NO_CAR, (len(dets), 1))
    for car in cars[::-1]:  # the first car wins: written last
        out[centres_inside(dets, car)] = car
    return out


def _reported_cars(plan: _Plan) -> np.ndarray:
    """(K, 6) cars found: a whole-frame stand-in is not a car, but cars seen in a close-up are."""
    if not plan.whole_frame:
        return plan.cars
    found = plan.found if plan.found is not None else np.zeros((0, 5), np.float32)
    return np.concatenate([found[:, :5], np.full((len(found), 1), -1, np.float32)], axis=1).astype(np.float32)


def _merge(parts: list[np.ndarray], iou_threshold: float) -> np.ndarray:
    """One frame's damage rows from overlapping crops: NMS keeps the best of duplicates."""
    rows = np.concatenate(parts, axis=0) if parts else np.zeros((0, DETECTION_COLUMNS), np.float32)
    if len(rows) > 1:
        rows = rows[nms_keep(rows, iou_threshold)]
    return rows.astype(np.float32, copy=False).reshape(-1, DETECTION_COLUMNS)


def build_detector(
    config: DetectorConfig, gate: CarGate | None = None, conf_threshold: float | None = None, *, data_dir: Path | None = None,
) -> CarGatedDetector:
    """The configured detection path; ``gate``/``conf_threshold`` override the config (``detect``, ``evaluate``).

    Both models are warmed up on every batch size the path sends them (1 to ``max_batch``) before
    this returns, so the stage reports ready only once the first frames will not pay for it.
    ``data_dir`` holds TensorRT's caches (``<data_dir>/tensorrt``); needed with provider tensorrt."""
    gate = gate or config.car_gate
    threshold = config.conf_threshold if conf_threshold is None else conf_threshold
    runtime = {
        "workers": config.preprocess_workers, "io_binding": config.io_binding, "max_batch": config.max_batch,
        "cache_dir": data_dir / TENSORRT_CACHE if data_dir is not None else None,
    }
    damage = Detector(model_file(config.model, config.precision, config.input_type), config.provider, threshold, config.iou_threshold, config.threads, **runtime)
    damage.head_layout()  # a model whose output fits no head fails now, naming the file, not on the first frame
    cars = None
    if gate != "off":
        car_config = config.cars.model_copy(update={"model": model_file(config.cars.model, config.precision, config.input_type)})
        cars = CarDetector(car_config, config.provider, config.threads, **runtime)
    sizes = range(1, config.max_batch + 1)
    for model in (damage, cars.detector if cars else None):
        if model is not None:
            log.info("detector %s warmed up on batch sizes 1-%d in %.2f s", model.name, config.max_batch, model.warm_up(sizes))
    return CarGatedDetector(
        damage, cars, gate, margin=config.cars.margin, max_batch=config.max_batch, inspect_every_s=config.cars.inspect_every_s,
        photo_whole_share=config.cars.photo_whole_share, max_zoom=config.cars.max_zoom,
        inspections_per_frame=config.cars.inspections_per_frame, motion=config.cars.motion,
        inspect_moving=config.cars.inspect_moving, tiles=config.cars.tiles,
    )


def model_file(path: Path, precision: str, input_type: str = "float32") -> Path:
    """The file the configured precision and input type run; a missing copy is a clear error naming the command."""
    variant = model_variant(path, precision, input_type)
    if variant != path and not variant.is_file():
        raise FileNotFoundError(f"detector model {variant} not found: detector.precision is {precision}, "
                                f"detector.input_type is {input_type}; write it with {_copy_commands(path, precision, input_type)}")
    return variant


def _copy_commands(path: Path, precision: str, input_type: str) -> str:
    """The command(s) that write the copy ``model_variant`` names."""
    commands, source = [], path
    if precision == "fp16" and model_variant(path, "fp16") != path:
        commands.append(f"`scratchwatch fp16 {path}`")
        source = model_variant(path, "fp16")
    if input_type == "uint8" and model_variant(source, "fp32", "uint8") != source:
        commands.append(f"`scratchwatch u8 {source}`")
    return " then ".join(commands)
