"""Inference stage: PULL frames, batch them, run the detector, PUSH detections downstream.

Whatever is waiting is drained at once: live cameras keep only their newest frame (an older
one would only add latency), replay frames are all kept, and frames from several cameras run
as one batch. With ``batch_wait_ms`` > 0 the stage gathers frames, from any cameras, until a
batch of ``batch_frames`` is full or its oldest frame has waited that long (a camera's frames are
never held back behind its EOS or a STOP). EOS and STOP come from the supervisor on the control
channel, never on the frames socket: an EOS carries how many frames its source sent and is
acknowledged (and forwarded to incidents, in order after that source's detections) once all of
them arrived, so no frame of a file is lost to a socket closing early. The detections link ends
the same way: the STOP inference forwards carries how many detections it sent, incidents
acknowledges it with how many it got (relayed by the supervisor on the control channel), and only
then does inference close its socket and exit. The frames Receiver carries the heartbeat.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from pipeline.car_gate import CarGatedDetector, build_detector
from pipeline.copies import COPIES, is_view
from pipeline.detector import is_device_failure
from pipeline.logs import RateLimitedLog
from pipeline.messages import EosHeader, EventHeader, Frame, Message, StopHeader, encode_control, encode_detections
from pipeline.stage import Histogram, StageContext, run_stage
from pipeline.transport import LINGER_MS, Endpoints, Receiver, pull_socket, push_socket, send, send_within

log = logging.getLogger(__name__)
POLL_MS = 200
DRAIN_LIMIT = 64
"""At most this many waiting messages are taken per round, so control stays responsive."""
MAX_FAILURES_IN_A_ROW = 8
"""A detector that fails this many frames in a row is broken (a bad model, a CUDA error, out of
memory), not unlucky: the stage fails loudly instead of skipping every frame forever."""


END_ACK_TIMEOUT_S = 30.0
"""How long inference waits for incidents to take its STOP and acknowledge the end of the detections
stream. Incidents takes a few queued detections at most before the STOP, so only a wedged or dead
incidents stage reaches this bound; the stage then fails saying so, instead of exiting on linger."""


class EndNotAcknowledgedError(RuntimeError):
    """Incidents never acknowledged the end of the detections stream."""


class DetectorFailedError(RuntimeError):
    """The detector failed MAX_FAILURES_IN_A_ROW frames in a row, or the GPU failed (a CUDA error, out
    of memory: at once, no retry); the message has the error."""


def newest_live_only(messages: list[Message]) -> tuple[list[Message], int]:
    """Drop live frames that have a newer frame of the same camera in ``messages``.

    Replay frames and control messages always stay, in order. Returns (kept, dropped count).
    """
    stale = _stale_live(messages)
    return [m for i, m in enumerate(messages) if i not in stale], len(stale)


def _stale_live(messages: list[Message]) -> set[int]:
    """Indices of live frames that have a newer frame of the same camera in ``messages``."""
    newest: dict[str, int] = {}
    for index, message in enumerate(messages):
        if isinstance(message, Frame) and message.header.kind == "live":
            newest[message.header.camera] = index
    return {
        i for i, m in enumerate(messages) if isinstance(m, Frame) and m.header.kind == "live" and newest[m.header.camera] != i
    }


class InferenceStage:
    """The stage's loop, separate from process setup so tests can drive it on real sockets."""

    def __init__(
        self,
        detector: CarGatedDetector,
        receiver: Receiver,
        out: zmq.Socket,
        max_batch: int,
        rate_limit_s: float = 10.0,
        *,
        control: Receiver,
        notify: Callable[..., None] | None = None,
        live_send_timeout_s: float = 1.0,
        batch_wait_ms: float = 0.0,
    ) -> None:
        self.detector = detector
        self.receiver = receiver
        self.control = control
        self.out = out
        self.max_batch = max_batch
        """Frames per batch, gathered across cameras."""
        self.batch_wait_s = batch_wait_ms / 1000
        """How long the oldest waiting frame may wait for its batch to fill; 0: no wait."""
        self.pending: list[tuple[float, Frame]] = []
        """Frames waiting for their batch, with their arrival (monotonic s), oldest first."""
        self.notify = notify
        """``EventSender.emit``: EOS acknowledgements to the supervisor."""
        self.frames = self.batches = self.dropped = self.errors = self.foreign_control = 0
        self.cars = self.inferences = self.car_inferences = 0
        self.sent = 0
        """Detections messages sent to incidents (the count the STOP carries)."""
        self.acknowledged: int | None = None
        """How many of them incidents says it received, once it acknowledged the STOP."""
        self.stop_sent_at: float | None = None
        self.await_end_ack = True
        """False for a worker on its own (`scratchwatch stage`): its incidents stage has no way back to it,
        and the socket's linger delivers what is left."""
        self.failures_in_a_row = 0
        self.latency = Histogram()
        """Seconds per ``detector.detect`` call (one batch)."""
        self.batch_wait = Histogram()
        """Seconds each batch's oldest frame waited in the stage before the batch ran."""
        self.received: Counter[str] = Counter()
        self.live_send_timeout_s = live_send_timeout_s
        self.undelivered: Counter[str] = Counter()
        """Live frames analysed whose detections incidents did not take in time, by camera (dropped, never queued)."""
        self.pending_eos: dict[str, EosHeader] = {}
        self.eos_done: set[str] = set()
        self.stopping = False
        self._log = RateLimitedLog(log, rate_limit_s)

    def run(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        """Until STOP or ``keep_going`` turns false."""
        poller = zmq.Poller()  # wake for either socket: an EOS or STOP must not wait behind a frames poll
        poller.register(self.receiver.sock, zmq.POLLIN)
        poller.register(self.control.sock, zmq.POLLIN)
        while True:
            poller.poll(self._poll_ms())
            for message in self.control.drain(0, DRAIN_LIMIT):
                self._control(message)
            messages = self.receiver.drain(0, DRAIN_LIMIT)
            self.handle(messages)
            if self._settle():
                return
            if not messages and not self.pending and not keep_going():
                log.warning("inference: supervisor gone, exiting")
                return

    def handle(self, messages: list[Message]) -> None:
        """Process one drained round of the frames socket: queue its frames, run the batches that are due."""
        arrived = time.monotonic()
        for message in messages:
            if isinstance(message, Frame):
                self.received[message.header.camera] += 1
                if not is_view(message.image):  # a JPEG frame is decoded into pixels of its own
                    COPIES.note("jpeg_decode" if message.header.encoding == "jpeg" else "receive")
                self.pending.append((arrived, message))
            else:  # only the supervisor's control channel may end a stream
                self.foreign_control += 1
                self._log.warning("foreign", "inference: ignored a %s message on the frames socket (%d so far)",
                                  type(message).__name__, self.foreign_control)
        stale = _stale_live([frame for _, frame in self.pending])
        if stale:
            self.pending = [entry for i, entry in enumerate(self.pending) if i not in stale]
            self.dropped += len(stale)
        self._run_due()

    def _run_due(self) -> None:
        """Run full batches; a partial one once its oldest frame waited ``batch_wait_s``, or at once
        when a frame in it belongs to a source that ended (its EOS must follow its detections)."""
        flush = self.stopping or self.batch_wait_s <= 0 or any(f.header.camera in self.pending_eos for _, f in self.pending)
        while self.pending:
            waited = time.monotonic() - self.pending[0][0]
            if len(self.pending) < self.max_batch and not flush and waited < self.batch_wait_s:
                return
            batch = [frame for _, frame in self.pending[: self.max_batch]]
            del self.pending[: self.max_batch]
            self.batch_wait.observe(waited)
            self._infer(batch)

    def _poll_ms(self) -> int:
        """Wake when the oldest waiting frame is due, else poll as usual."""
        if not self.pending or self.batch_wait_s <= 0:
            return POLL_MS
        due_s = self.pending[0][0] + self.batch_wait_s - time.monotonic()
        return max(0, min(POLL_MS, math.ceil(due_s * 1000)))

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "batches": self.batches,
            "dropped_live": self.dropped,
            "errors": self.errors,
            "malformed": self.receiver.malformed,
            "cars": self.cars,
            "damage_inferences": self.inferences,
            "car_inferences": self.car_inferences,
            "latency": self.latency.snapshot(),
            **{f"{stage}_latency": getattr(self.detector, f"{stage}_seconds").snapshot()
               for stage in ("car", "damage") if hasattr(self.detector, f"{stage}_seconds")},
            "batch_wait": self.batch_wait.snapshot(),
            "foreign_control": self.foreign_control,
            "undelivered": dict(self.undelivered),
            "detections_sent": self.sent,
            "detections_acknowledged": self.acknowledged,
            "frame_copies": COPIES.snapshot(self.frames),
        }

    def _infer(self, batch: list[Frame]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        try:
            results = self.detector.detect([frame.image for frame in batch], [frame.header for frame in batch])
        except Exception as exc:
            if is_device_failure(exc):  # the device, not a frame: retrying frame by frame only hides it
                self.errors += len(batch)
                raise DetectorFailedError(
                    f"the GPU failed on a batch of {len(batch)} frame(s), first camera {batch[0].header.camera} frame "
                    f"{batch[0].header.seq}: {exc!r}; the stage stops so it is restarted (check the device, its memory "
                    f"and detector.max_batch)"
                ) from exc
            if len(batch) == 1 or self.failures_in_a_row:  # after a failure, no retry storm
                for frame in batch:
                    self._bad_frame(frame, exc)
                return
            for frame in batch:  # find the bad frame; the others still get analysed
                self._infer([frame])
            return
        self.failures_in_a_row = 0
        self.batches += 1
        self.latency.observe(time.perf_counter() - started)
        damage = self.detector.damage
        for frame, result in zip(batch, results):
            self.frames += 1
            self.cars += len(result.cars)
            self.inferences += result.inferences
            self.car_inferences += result.car_inferences
            parts = encode_detections(
                frame.header, result.rows, frame.image, model_name=damage.name, model_sha256=damage.model_sha256,
                cars=len(result.cars), inferences=result.inferences,
            )
            if self._deliver(frame, parts):
                self.sent += 1

    def _deliver(self, frame: Frame, parts: list[Any]) -> bool:
        """Replay waits for incidents (lossless); live detections not taken in time are dropped and counted."""
        if frame.header.kind != "live":
            return send(self.out, parts)
        if send_within(self.out, parts, self.live_send_timeout_s):
            return True
        camera = frame.header.camera
        self.undelivered[camera] += 1
        self._log.warning("undelivered", "inference: the incidents stage did not take camera %s's detections within %g s; "
                          "dropped (%d so far for that camera)", camera, self.live_send_timeout_s, self.undelivered[camera])
        return False

    def _bad_frame(self, frame: Frame, exc: Exception) -> None:
        self.errors += 1
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise DetectorFailedError(
                f"the detector failed on {self.failures_in_a_row} frames in a row, last on camera "
                f"{frame.header.camera} frame {frame.header.seq}: {exc!r}; check the model and the execution provider"
            ) from exc
        self._log.warning(
            "detect", "inference: camera %s frame %d failed and was skipped (%d so far)", frame.header.camera, frame.header.seq, self.errors
        )
        log.debug("detector failure", exc_info=True)

    def _control(self, message: Message) -> None:
        if isinstance(message, EosHeader):
            self.pending_eos[message.camera] = message
        elif isinstance(message, StopHeader):
            self.stopping = True
        elif isinstance(message, EventHeader) and message.stage == "incidents" and message.event == "stopping":
            self.acknowledged = int(message.data.get("detections") or 0)  # relayed by the supervisor
        else:
            self._log.warning("unexpected", "inference: ignored unexpected %s control message", type(message).__name__)

    def _settle(self) -> bool:
        """Forward and acknowledge each EOS whose frames all arrived; True once incidents acknowledged STOP.

        STOP comes after the supervisor had its acknowledgements; an EOS still waiting then
        belongs to a source whose frames will never come, and is forwarded saying so.
        """
        for camera, eos in list(self.pending_eos.items()):
            missing = (eos.frames or 0) - self.received[camera]
            if missing > 0 and not self.stopping:
                continue
            if missing > 0:
                eos = eos.model_copy(update={"error": eos.error or f"{missing} of {eos.frames} frames never arrived"})
            send(self.out, encode_control(eos))
            del self.pending_eos[camera]
            self.eos_done.add(camera)
            if self.notify:
                self.notify("eos", final=True, camera=camera, frames=self.received[camera])
        if self.stopping and self.stop_sent_at is None:
            stop = StopHeader(sources=tuple(sorted(self.eos_done)), detections=self.sent)
            if not send_within(self.out, encode_control(stop), END_ACK_TIMEOUT_S):
                raise EndNotAcknowledgedError(f"the incidents stage did not take the STOP within {END_ACK_TIMEOUT_S:.0f} s")
            self.stop_sent_at = time.monotonic()
        return self.stop_sent_at is not None and (not self.await_end_ack or self._end_acknowledged())

    def _end_acknowledged(self) -> bool:
        """True once incidents confirmed the STOP; an error once it failed to for END_ACK_TIMEOUT_S."""
        assert self.stop_sent_at is not None
        if self.acknowledged is None:
            if time.monotonic() - self.stop_sent_at > END_ACK_TIMEOUT_S:
                raise EndNotAcknowledgedError(
                    f"the incidents stage did not acknowledge the end of the detections stream within "
                    f"{END_ACK_TIMEOUT_S:.0f} s ({self.sent} detections sent)")
            return False
        if self.acknowledged < self.sent:  # a restarted incidents stage counts from 0; lost with the dead one
            log.warning("inference: incidents acknowledged %d of the %d detections sent", self.acknowledged, self.sent)
        return True



def inference_main(settings: Any, endpoints: Endpoints, parent_pid: int) -> None:
    """Process entry point (spawn target)."""
    run_stage("inference", settings, endpoints, parent_pid, _serve)


def _serve(stage: StageContext) -> dict[str, Any]:
    config, hwm = stage.settings.detector, stage.settings.transport.hwm
    detector = build_detector(config, data_dir=stage.settings.data_dir)  # warmed up on every batch size: then ready
    damage = detector.damage
    frames_in = pull_socket(stage.ctx, stage.endpoints.frames, hwm, curve=stage.endpoints.curve)
    detections_out = push_socket(stage.ctx, stage.endpoints.detections, hwm, curve=stage.endpoints.curve)
    rate_limit_s = stage.settings.logging.rate_limit_s
    receiver = Receiver(frames_in, rate_limit_s, "inference", stage.events.beat)
    control = Receiver(pull_socket(stage.ctx, stage.endpoints.control, hwm), rate_limit_s, "inference control")
    worker = InferenceStage(detector, receiver, detections_out, config.batch_frames or config.max_batch, rate_limit_s, control=control,
                            notify=stage.events.emit, live_send_timeout_s=stage.settings.transport.live_send_timeout_s,
                            batch_wait_ms=config.batch_wait_ms)
    stage.events.stats_source = worker.stats
    stage.events.emit(
        "ready", final=True, providers=damage.providers, model=str(damage.model_path), imgsz=list(damage.imgsz),
        conf_threshold=damage.conf_threshold, car_gate=config.car_gate,
        car_model=str(detector.cars.detector.model_path) if detector.cars else None,
    )
    log.info(
        "inference ready: %s on %s, input %s, car gate %s%s", damage.name, damage.providers[0], damage.imgsz, config.car_gate,
        f" ({detector.cars.name})" if detector.cars else "",
    )
    worker.await_end_ack = not stage.standalone
    worker.run(stage.parent_alive)
    detections_out.close(linger=0 if worker.await_end_ack else LINGER_MS)  # acknowledged: nothing is left in flight
    return worker.stats()
