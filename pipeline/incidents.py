"""Incidents stage: PULL detections, track them, write incidents and their snapshots.

The row is written when an incident opens, so capture-to-row latency is one tracker decision
plus one SQL upsert, and updated (same uid) when it closes with the best frame, snapshots,
closed_at and detection count. Every record goes to the durable spool first (storage/spool.py)
and SQL runs on IncidentWriter's thread: a locked or unreachable database delays rows but never
stalls the stream, and what is not committed at exit is written at the next start.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from typing import Any

from pipeline.config import Settings
from pipeline.latency import LatencyLog
from pipeline.logs import RateLimitedLog
from pipeline.messages import Detections, EosHeader, Message, StopHeader
from pipeline.snapshots import snapshot_paths, write_snapshots
from pipeline.stage import EventSender, StageContext, run_stage
from pipeline.tracker import CameraTracker, Track
from pipeline.transport import Endpoints, Receiver, pull_socket

log = logging.getLogger(__name__)
POLL_MS = 200
PROGRESS_INTERVAL_S = 0.5


class IncidentsStage:
    """Turns the detections stream into incident records handed to a writer."""

    def __init__(self, settings: Settings, writer: Any, events: EventSender | None = None) -> None:
        self.settings = settings
        self.writer = writer
        self.events = events
        self.trackers: dict[str, CameraTracker] = {}
        self.frames: Counter[str] = Counter()
        self.opened: Counter[str] = Counter()
        self.snapshot_errors = 0
        self.snapshots_skipped = 0
        self.errors = 0
        self.received = 0
        """Detections messages taken off the socket (what the end's acknowledgement reports)."""
        self.first_frame_ns: int | None = None
        self.last_frame_ns: int | None = None
        self.latency = LatencyLog()
        self._last_progress = 0.0

    def handle(self, message: Message) -> bool:
        """One message; True on STOP (every incident closed, nothing more will come)."""
        if isinstance(message, Detections):
            self.received += 1
            self._detections(message)
        elif isinstance(message, EosHeader):
            self._close(self.trackers.pop(message.camera, None))
            self.progress(force=True)
        elif isinstance(message, StopHeader):
            if message.detections is not None and self.received < message.detections:
                log.warning("incidents: received %d of the %d detections inference sent", self.received, message.detections)
            for camera in list(self.trackers):
                self._close(self.trackers.pop(camera))
            return True
        return False

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.events and (force or now - self._last_progress >= PROGRESS_INTERVAL_S):
            self._last_progress = now
            self.events.emit("progress", **self.counts())

    def counts(self) -> dict[str, Any]:
        return {
            "frames": dict(self.frames),
            "incidents": dict(self.opened),
            "snapshot_errors": self.snapshot_errors,
            "snapshots_skipped": self.snapshots_skipped,
            "errors": self.errors,
            "first_frame_ns": self.first_frame_ns,
            "last_frame_ns": self.last_frame_ns,
            **self.writer.stats(),
            "latency_ms": self.latency.summary(),
        }

    def _detections(self, message: Detections) -> None:
        camera = message.header.camera
        self.frames[camera] += 1
        self.last_frame_ns = time.time_ns()  # steady-state throughput, without process start-up
        self.first_frame_ns = self.first_frame_ns or self.last_frame_ns
        tracker = self.trackers.get(camera)
        if tracker is None:  # not setdefault: that would build a tracker for every frame
            tracker = self.trackers[camera] = CameraTracker(self.settings.tracker)
        update = tracker.update(message.boxes, message.header, message.image)
        for track in update.opened:
            self.opened[camera] += 1
            track.state.update(uid=str(uuid.uuid4()), model_name=message.model_name, model_sha256=message.model_sha256)
            self.writer.submit(incident_record(track))
            if self._snapshots(track):  # after the first write: JPEG encoding is off the latency path
                self.writer.submit(incident_record(track))
        self._close_tracks(update.closed)
        self.latency.add(camera, message.header.captured_ns)
        self.progress()

    def _close(self, tracker: CameraTracker | None) -> None:
        if tracker is not None:
            self._close_tracks(tracker.close_all())

    def _close_tracks(self, tracks: list[Track]) -> None:
        for track in tracks:
            self._snapshots(track)
            self.writer.submit(incident_record(track, closed=True))

    def _snapshots(self, track: Track) -> bool:
        """Write (or overwrite, on close) the best frame's JPEGs; a failure costs only the images."""
        if not self.settings.snapshots.enabled or track.best_image is None or not self._room_for_snapshots():
            return False
        if track.state.get("snapshot_seq") == track.best.header.seq:
            return False  # the best frame has not changed since its JPEGs were written
        # the folder date is the incident's first frame, so a rewrite after midnight lands on the same files
        first = track.first.header
        root = self.settings.data_dir / "snapshots"
        paths = snapshot_paths(root, first.camera, first.captured_at, str(track.state["uid"]))
        label = f"scratch {track.best.score:.2f}"
        car = track.best.car
        try:
            write_snapshots(track.best_image, track.best.box, label, paths, self.settings.snapshots, car)
        except Exception as exc:
            self.snapshot_errors += 1
            log.error("incident %s: snapshot not written: %s", track.state["uid"], exc)
            return False
        # stored relative to the snapshot root, which the API resolves them under (and only there)
        relative = lambda path: path.relative_to(root).as_posix()  # noqa: E731
        track.state.update(
            snapshot_path=relative(paths.frame), crop_path=relative(paths.crop),
            car_path=relative(paths.car) if car is not None else None, snapshot_seq=track.best.header.seq,
        )
        return True


    def _room_for_snapshots(self) -> bool:
        """A spool past its limit means a long outage: its disk is kept for records, not JPEGs."""
        spool = getattr(self.writer, "spool", None)
        if spool is None or not spool.over_limit():
            return True
        self.snapshots_skipped += 1
        log.error("spool %s is over database.spool_max_mb (%.1f MB): snapshot skipped (%d so far), records are kept",
                  spool.path, spool.size_bytes() / 1e6, self.snapshots_skipped)
        return False


def incident_record(track: Track, *, closed: bool = False) -> Any:
    """The storage record of a track: opened by ``track.opened``, best frame ``track.best``."""
    from storage.repository import IncidentRecord

    opened, best, first = track.opened, track.best, track.first
    assert opened is not None, "only incidents (opened tracks) become records"
    x1, y1, x2, y2 = (int(round(float(v))) for v in best.box)
    height, width = best.header.shape[:2]
    return IncidentRecord(
        uid=str(track.state["uid"]),
        camera_id=best.header.camera,
        kind=best.header.kind,
        source=best.header.source,
        opened_at=first.header.captured_at,
        captured_at=opened.header.captured_at,
        closed_at=track.last.header.captured_at if closed else None,
        best_score=best.score,
        x1=x1,
        y1=y1,
        x2=x2,
        y2=y2,
        frame_width=width,
        frame_height=height,
        model_name=str(track.state["model_name"]),
        model_sha256=str(track.state["model_sha256"]),
        detection_count=track.hits,
        media_time_s=best.header.media_time_s,
        first_media_time_s=first.header.media_time_s,
        snapshot_path=track.state.get("snapshot_path"),  # type: ignore[arg-type]
        crop_path=track.state.get("crop_path"),  # type: ignore[arg-type]
        car_path=track.state.get("car_path"),  # type: ignore[arg-type]
        **_car_fields(best.car),
    )


def _car_fields(car: Any) -> dict[str, Any]:
    """The car an incident's best detection lies on (box, score, track id), or nothing."""
    if car is None:
        return {}
    x1, y1, x2, y2 = (int(round(float(v))) for v in car[:4])
    track = int(car[5])
    return {"car_x1": x1, "car_y1": y1, "car_x2": x2, "car_y2": y2, "car_score": float(car[4]),
            "car_track_id": track if track >= 0 else None}


def incidents_main(settings: Settings, endpoints: Endpoints, parent_pid: int) -> None:
    """Process entry point (spawn target)."""
    run_stage("incidents", settings, endpoints, parent_pid, _serve)


def open_spool(settings: Settings) -> Any:
    """The data dir's spool for this database: old ``unsaved/*.jsonl`` imported, crashed runs adopted."""
    from storage.spool import SPOOL_FILENAME, Spool

    spool = Spool(settings.data_dir / SPOOL_FILENAME, settings.database_url, max_bytes=int(settings.database.spool_max_mb * 1e6))
    spool.import_jsonl(settings.data_dir / "unsaved")
    spool.adopt()
    return spool


def _serve(stage: StageContext) -> dict[str, Any]:
    from storage.writer import IncidentWriter, LazyRepository

    settings = stage.settings
    spool = open_spool(settings)
    database = LazyRepository(settings.database_url, connect_timeout_s=settings.database.connect_timeout_s,
                              statement_timeout_ms=int(settings.database.statement_timeout_s * 1000))
    writer = IncidentWriter(database, spool)
    receiver = Receiver(pull_socket(stage.ctx, stage.endpoints.detections, settings.transport.hwm, curve=stage.endpoints.curve), settings.logging.rate_limit_s, "incidents", stage.events.beat)
    worker = IncidentsStage(settings, writer, stage.events)
    stage.events.stats_source = worker.counts
    stage.events.emit("ready", final=True)
    bad = RateLimitedLog(log, settings.logging.rate_limit_s)
    try:
        while True:
            message = receiver.recv(POLL_MS)
            if message is not None and handle_safely(worker, message, bad):
                # the acknowledgement the supervisor relays to inference: only then does inference close its socket
                stage.events.emit("stopping", final=True, detections=worker.received)
                break
            if message is None and not stage.parent_alive():
                log.warning("incidents: supervisor gone; closing open incidents and exiting")
                worker.handle(StopHeader())
                break
    finally:
        writer.close(settings.database.flush_timeout_s)
        database.dispose()
    stats = {**worker.counts(), "malformed": receiver.malformed}
    spool.close()
    return stats


def handle_safely(worker: IncidentsStage, message: Message, bad: RateLimitedLog) -> bool:
    """One bad message (a NaN box, an impossible timestamp) costs that message, never the stage."""
    try:
        return worker.handle(message)
    except Exception as exc:
        worker.errors += 1
        bad.warning("handle", "incidents: message skipped (%s): %s", type(message).__name__, exc)
        return isinstance(message, StopHeader)  # a STOP that failed to close a track still ends the stage
