"""Per-camera IoU tracker that turns per-frame detections into incidents.

Greedy IoU association is enough here: scratches do not move relative to the camera within a
track's life (a parked car), and a frame carries a handful of boxes at most. A track opens an
incident after ``min_hits`` detections and closes after ``max_missed`` analysed frames without
one, so a detection flickering for fewer frames stays one incident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.geometry import box_iou
from pipeline.config import TrackerConfig
from pipeline.messages import FrameHeader


@dataclass
class Observation:
    """One detection with the frame it came from (the frame only when kept as best)."""

    box: np.ndarray
    score: float
    cls: int
    header: FrameHeader
    car: np.ndarray | None = None
    """The car the detection lies on: x1 y1 x2 y2 score track (frame pixels), if the car stage found one."""


@dataclass
class Track:
    track_id: int
    first: Observation
    last: Observation
    best: Observation
    best_image: np.ndarray | None
    hits: int = 1
    missed: int = 0
    opened: Observation | None = None
    """The detection that made this track an incident; None while still tentative."""
    state: dict[str, object] = field(default_factory=dict)
    """Owned by the incidents stage (uid, recorded ids): the tracker never reads it."""

    @property
    def is_incident(self) -> bool:
        return self.opened is not None

    def add(self, obs: Observation, image: np.ndarray) -> None:
        self.hits += 1
        self.missed = 0
        self.last = obs
        if obs.score > self.best.score:
            self.best, self.best_image = obs, image


@dataclass
class TrackUpdate:
    opened: list[Track] = field(default_factory=list)
    closed: list[Track] = field(default_factory=list)
    assigned: list[Track] = field(default_factory=list)
    """The track of each detection fed to ``update``, in input order (the car stage needs it)."""


def _car(row: np.ndarray) -> np.ndarray | None:
    """Rows from the car-gated detector carry their car after the six detection columns."""
    return row[6:12].copy() if len(row) >= 12 and row[6] >= 0 else None


class CameraTracker:
    """Tracks of one camera; all frames of a camera go through one instance, in order."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(self, dets: np.ndarray, header: FrameHeader, image: np.ndarray | None) -> TrackUpdate:
        """Feed one analysed frame's (N, 6) detections (possibly none)."""
        update = TrackUpdate()
        observations = [Observation(row[:4].copy(), float(row[4]), int(row[5]), header, _car(row)) for row in dets]
        assigned: dict[int, Track] = {}
        matched_tracks, matched_obs = self._associate(observations)
        for track_index, obs_index in zip(matched_tracks, matched_obs):
            track = assigned[obs_index] = self.tracks[track_index]
            track.add(observations[obs_index], image)
            if not track.is_incident and track.hits >= self.config.min_hits:
                track.opened = observations[obs_index]
                update.opened.append(track)
        self._age(set(matched_tracks), update)
        for obs_index in sorted(set(range(len(observations))) - set(matched_obs)):
            assigned[obs_index] = self._start(observations[obs_index], image, update)
        update.assigned = [assigned[i] for i in range(len(observations))]
        return update

    def close_all(self) -> list[Track]:
        """End of the source: every incident closes now, tentative tracks are forgotten."""
        closed = [track for track in self.tracks if track.is_incident]
        self.tracks = []
        return closed

    def _associate(self, observations: list[Observation]) -> tuple[list[int], list[int]]:
        """Greedy matching, best IoU first, each track and detection used once."""
        if not self.tracks or not observations:
            return [], []
        iou = box_iou(np.stack([t.last.box for t in self.tracks]), np.stack([o.box for o in observations]))
        same_class = np.array([[t.last.cls == o.cls for o in observations] for t in self.tracks])
        iou = np.where(same_class, iou, 0.0)
        tracks: list[int] = []
        obs: list[int] = []
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            t, o = divmod(int(flat), len(observations))
            if iou[t, o] < self.config.iou_threshold:
                break
            if t not in tracks and o not in obs:
                tracks.append(t)
                obs.append(o)
        return tracks, obs

    def _start(self, obs: Observation, image: np.ndarray | None, update: TrackUpdate) -> Track:
        track = Track(self._next_id, first=obs, last=obs, best=obs, best_image=image)
        self._next_id += 1
        self.tracks.append(track)
        if self.config.min_hits <= 1:
            track.opened = obs
            update.opened.append(track)
        return track

    def _age(self, matched: set[int], update: TrackUpdate) -> None:
        """Unmatched tracks miss a frame; those at ``max_missed`` end (closing if incidents)."""
        alive: list[Track] = []
        for index, track in enumerate(self.tracks):
            if index not in matched:
                track.missed += 1
            if track.missed < self.config.max_missed:
                alive.append(track)
            elif track.is_incident:
                update.closed.append(track)
        self.tracks = alive
