"""Incidents stage: PULL detections, track them, write incidents and their snapshots.

The row is written when an incident opens, so capture-to-row latency is one tracker decision
plus one SQL upsert, and updated (same uid) when it closes with the best frame, snapshots,
closed_at and detection count. Every record goes to the durable spool first (storage/spool.py)
and SQL runs on IncidentWriter's thread: a locked or unreachable database delays rows but never
stalls the stream, and what is not committed at exit is written at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.latency import LatencyLog
from pipeline.logs import RateLimitedLog
from pipeline.messages import Detections, EosHeader, Message, StopHeader
from pipeline.snapshots import snapshot_paths, write_snapshots
from pipeline.stage import EventSender, Histogram, StageContext, run_stage
from pipeline.tracker import CameraTracker, Track
from pipeline.transport import Endpoints, Receiver, pull_socket
from storage.snapshot_files import SNAPSHOT_FIELDS, SnapshotUnavailable, resolve_snapshot, snapshot_root

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
        self.closed: Counter[str] = Counter()
        self.db_latency = Histogram()
        """Seconds per committed database write (the writer's thread reports them through ``on_write``)."""
        self.snapshot_errors = 0
        self.snapshots_skipped = 0
        """Not written: the spool file alone is past database.spool_max_mb."""
        self.snapshots_dropped = 0
        """Deleted to keep the spool and its queued snapshots within database.spool_max_mb (the oldest first)."""
        self.snapshots_refused = 0
        """Not written: the data disk had less free space than database.spool_reserve_mb."""
        self._low_disk = False
        self._log = RateLimitedLog(log, settings.logging.rate_limit_s)
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
            "closed": dict(self.closed),
            "db_write_latency": self.db_latency.snapshot(),
            "snapshot_errors": self.snapshot_errors,
            "snapshots_skipped": self.snapshots_skipped,
            "snapshots_dropped": self.snapshots_dropped,
            "snapshots_refused": self.snapshots_refused,
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
                self._keep_spool_within_limit(newest=str(track.state["uid"]))
        self._close_tracks(update.closed)
        self.latency.add(camera, message.header.captured_ns)
        self.progress()

    def _close(self, tracker: CameraTracker | None) -> None:
        if tracker is not None:
            self._close_tracks(tracker.close_all())

    def _close_tracks(self, tracks: list[Track]) -> None:
        for track in tracks:
            wrote = self._snapshots(track)
            self.writer.submit(incident_record(track, closed=True))
            self.closed[track.best.header.camera] += 1
            if wrote:
                self._keep_spool_within_limit(newest=str(track.state["uid"]))

    def _snapshots(self, track: Track) -> bool:
        """Write (or overwrite, on close) the best frame's JPEGs; a failure costs only the images."""
        if not self.settings.snapshots.enabled or track.best_image is None:
            return False
        if track.state.get("snapshot_seq") == track.best.header.seq:
            return False  # the best frame has not changed since its JPEGs were written (or they were dropped)
        if not self._room_for_snapshots():
            return False
        # the folder date is the incident's first frame, so a rewrite after midnight lands on the same files
        first = track.first.header
        root = snapshot_root(self.settings.data_dir)
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
        """The disk is kept for records, not JPEGs: below the free-space reserve, or with a spool file
        past its limit (a long outage), no snapshot is written."""
        data_dir, reserve_mb = self.settings.data_dir, self.settings.database.spool_reserve_mb
        free = shutil.disk_usage(data_dir).free
        if free < reserve_mb * 1e6:
            self.snapshots_refused += 1
            if not self._low_disk:  # once per episode
                self._low_disk = True
                log.error("data folder %s has %.1f MB free, below database.spool_reserve_mb (%g MB): new snapshots are "
                          "refused so incident records still fit; free disk space", data_dir, free / 1e6, reserve_mb)
            return False
        if self._low_disk:
            self._low_disk = False
            log.warning("data folder %s has %.1f MB free again: snapshots resume (%d refused meanwhile)",
                        data_dir, free / 1e6, self.snapshots_refused)
        spool = getattr(self.writer, "spool", None)
        if spool is None or not spool.over_limit():
            return True
        self.snapshots_skipped += 1
        self._log.warning("skipped", "spool %s alone is over database.spool_max_mb (%.1f MB): snapshot skipped (%d so far), "
                          "records are kept", spool.path, spool.size_bytes() / 1e6, self.snapshots_skipped)
        return False

    def _keep_spool_within_limit(self, newest: str) -> None:
        """Records waiting for the database and their snapshots share database.spool_max_mb: past it, the
        snapshots of the oldest queued records are deleted (never a record, never the newest snapshot)."""
        spool = getattr(self.writer, "spool", None)
        queued = spool.queued_snapshots() if spool is not None else []
        if not queued:
            return
        root = snapshot_root(self.settings.data_dir)
        sized = [(seq, uid, paths, sum(_file_size(root, p) for p in paths)) for seq, uid, paths in queued]
        total = spool.size_bytes() + sum(size for *_, size in sized)
        dropped = 0
        for seq, uid, paths, size in sized:
            if total <= spool.max_bytes:
                break
            if uid == newest or not spool.drop_snapshots(seq, uid):
                continue  # the newest stays; a record committed meanwhile keeps its files
            for path in paths:
                with contextlib.suppress(SnapshotUnavailable):
                    resolve_snapshot(root, path).unlink()
            self._forget_snapshots(uid)
            total -= size
            dropped += 1
        if dropped:
            self.snapshots_dropped += dropped
            self._log.warning("dropped", "spool and the snapshots of its queued records are over database.spool_max_mb "
                              "(%g MB): deleted the snapshots of the %d oldest queued incident(s), %d so far; records are kept",
                              spool.max_bytes / 1e6, dropped, self.snapshots_dropped)

    def _forget_snapshots(self, uid: str) -> None:
        """An open incident whose snapshots were dropped: its next records carry none (until its best frame changes)."""
        for tracker in self.trackers.values():
            for track in tracker.tracks:
                if track.state.get("uid") == uid:
                    for field in SNAPSHOT_FIELDS.values():
                        track.state[field] = None


def _file_size(root: Path, stored: str) -> int:
    try:
        return resolve_snapshot(root, stored).stat().st_size
    except (SnapshotUnavailable, OSError):
        return 0


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
    if stage.standalone:  # fed by several workers and capture nodes: see pipeline/fanin.py
        from pipeline.fanin import FanInIncidentsStage

        worker: IncidentsStage = FanInIncidentsStage(settings, writer, stage.events)
    else:
        worker = IncidentsStage(settings, writer, stage.events)
    writer.on_write = worker.db_latency.observe
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
            if stage.standalone:
                worker.tick()  # type: ignore[attr-defined]
                if not stage.parent_alive():
                    log.info("incidents: stopping; closing open incidents")
                    worker.finish()  # type: ignore[attr-defined]
                    break
            elif message is None and not stage.parent_alive():
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
