"""The incidents stage when the stages run on their own (`scratchwatch stage incidents`): one fan-in.

Several inference workers share a site's frames (ZeroMQ hands each frame to the next free worker),
so one camera's detections reach incidents from several workers, not in capture order, and a
file's end of stream comes straight from its capture node, not behind its last detections. This
stage puts them back in order before the tracker sees them:

- a replayed file's detections are released in ``seq`` order (files are lossless, so their seqs
  are contiguous); a gap that stays open ``REORDER_WAIT_S`` (a frame the detector failed on) is
  skipped, and a frame arriving after its gap was skipped is still tracked (counted ``late``);
- a live camera's detections go to the tracker as they come (live frames are dropped by design,
  a gap never closes; one frame out of order does not change an IoU tracker's decision);
- an EOS waits until its ``frames`` detections arrived, or until none of that camera came for
  ``EOS_WAIT_S`` (then it says how many never arrived);
- a STOP on the detections link is ignored and counted (``link_stops``): a worker stopping, or
  anyone who can reach the socket, must not end the site's incident store. The stage stops on its
  own SIGTERM/SIGINT (``finish``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from pipeline.incidents import IncidentsStage
from pipeline.messages import Detections, EosHeader, Message, StopHeader

log = logging.getLogger(__name__)
REORDER_WAIT_S = 5.0
"""How long released frames wait behind a missing one before it is given up on."""
REORDER_MAX = 256
"""At most this many frames of one camera wait behind a gap (bounded memory: frames carry pixels)."""
EOS_WAIT_S = 15.0
"""An end of stream whose frames stopped coming this long ago is released anyway."""


class FanInIncidentsStage(IncidentsStage):
    """IncidentsStage fed by several inference workers and by capture nodes directly."""

    def __init__(self, settings: Any, writer: Any, events: Any = None) -> None:
        super().__init__(settings, writer, events)
        self.waiting: dict[str, dict[int, Detections]] = {}
        self.next_seq: dict[str, int] = {}
        self.gap_since: dict[str, float] = {}
        self.arrived: Counter[str] = Counter()
        self.last_seen: dict[str, float] = {}
        self.pending_eos: dict[str, EosHeader] = {}
        self.late = self.skipped = self.link_stops = 0

    def handle(self, message: Message) -> bool:
        now = time.monotonic()
        if isinstance(message, Detections):
            camera = message.header.camera
            self.arrived[camera] += 1
            self.last_seen[camera] = now
            if message.header.kind != "replay":
                super().handle(message)
            elif message.header.seq < self.next_seq.get(camera, 0):
                self.late += 1  # its gap was given up on: still tracked, only out of order
                super().handle(message)
            else:
                self.waiting.setdefault(camera, {})[message.header.seq] = message
                self._release(camera, now)
        elif isinstance(message, EosHeader):
            self.pending_eos[message.camera] = message
            self.last_seen.setdefault(message.camera, now)
        elif isinstance(message, StopHeader):
            self.link_stops += 1
            log.info("incidents: ignored a STOP on the detections link (%d so far): this stage stops on its own signal",
                     self.link_stops)
        self.tick(now)
        return False

    def tick(self, now: float | None = None) -> None:
        """Give up on old gaps and release the ends of streams that are due; call it every loop."""
        now = time.monotonic() if now is None else now
        for camera, since in list(self.gap_since.items()):
            if now - since > REORDER_WAIT_S or len(self.waiting.get(camera, ())) > REORDER_MAX:
                self._skip_gap(camera, now)
        for camera, eos in list(self.pending_eos.items()):
            complete = self.arrived[camera] >= (eos.frames or 0) and not self.waiting.get(camera)
            if complete or now - self.last_seen.get(camera, now) > EOS_WAIT_S:
                self._end(camera, eos, now)

    def finish(self) -> None:
        """Shutdown: everything waiting is released in order, every stream ended, every incident closed."""
        now = time.monotonic()
        for camera in list(self.waiting):
            while self.waiting.get(camera):
                self._skip_gap(camera, now)
        for camera, eos in list(self.pending_eos.items()):
            self._end(camera, eos, now)
        super().handle(StopHeader())

    def counts(self) -> dict[str, Any]:
        return {**super().counts(), "late": self.late, "reorder_skipped": self.skipped, "link_stops": self.link_stops,
                "waiting": sum(len(frames) for frames in self.waiting.values())}

    def _release(self, camera: str, now: float) -> None:
        waiting = self.waiting.get(camera, {})
        seq = self.next_seq.get(camera, 0)
        while seq in waiting:
            super().handle(waiting.pop(seq))
            seq += 1
        self.next_seq[camera] = seq
        if waiting:
            self.gap_since.setdefault(camera, now)
        else:
            self.gap_since.pop(camera, None)

    def _skip_gap(self, camera: str, now: float) -> None:
        waiting = self.waiting.get(camera)
        self.gap_since.pop(camera, None)
        if not waiting:
            return
        first = min(waiting)
        self.skipped += first - self.next_seq.get(camera, 0)
        log.warning("incidents: camera %s frames %d..%d never arrived after %.0f s; going on without them",
                    camera, self.next_seq.get(camera, 0), first - 1, REORDER_WAIT_S)
        self.next_seq[camera] = first
        self._release(camera, now)

    def _end(self, camera: str, eos: EosHeader, now: float) -> None:
        while self.waiting.get(camera):
            self._skip_gap(camera, now)
        missing = (eos.frames or 0) - self.arrived[camera]
        if missing > 0:
            eos = eos.model_copy(update={"error": eos.error or f"{missing} of {eos.frames} frames never arrived"})
            log.warning("incidents: camera %s ended with %d of %d frames analysed", camera, self.arrived[camera], eos.frames)
        else:
            log.info("incidents: camera %s ended after %d frames", camera, self.arrived[camera])
        del self.pending_eos[camera]
        for table in (self.waiting, self.next_seq, self.gap_since, self.arrived, self.last_seen):
            table.pop(camera, None)  # a stream that starts again starts at seq 0
        super().handle(eos)
