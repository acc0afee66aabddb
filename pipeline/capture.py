"""Capture: one thread per source, OpenCV decoding, frames pushed to inference.

Files are lossless (block on the high-water mark) and end with EOS, sent on the supervisor's
control channel with the number of frames sent and acknowledged by inference once every one of
them arrived (only then does the thread close its socket); live sources (URLs, devices)
never block: a frame that does not fit is dropped and counted, and a lost stream reconnects with
bounded exponential backoff and jitter. Each thread owns its PUSH socket (zmq sockets are not
thread-safe). A live camera is opened and read in a process of its own (``live_capture_main``,
as Frigate does): OpenCV serialises FFmpeg's open across a process, so a camera that never
answers would otherwise hold every other camera's connect and reconnect for ``open_timeout_s``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from pipeline.backoff import Backoff
from pipeline.config import CameraConfig, CaptureConfig, is_live_source
from pipeline.copies import capture_copies
from pipeline.logs import RateLimitedLog, setup_logging
from pipeline.messages import EosHeader, FrameHeader, SourceKind, encode_control, encode_frame, now_ns
from pipeline.transport import CurveKeys, push_socket, send, send_until

log = logging.getLogger(__name__)
EOS_TIMEOUT_MS = 10_000
ACK_TIMEOUT_S = 30.0
"""Inference counts frames as they arrive (a few in flight at most), so its acknowledgement of an
EOS is quick; this bound only matters when inference is wedged, which supervision reports."""
LIVE_ACK_TIMEOUT_S = 3.0
"""A live camera's last frames are worth no wait: its process may have been killed mid-send."""
LIVE_LINGER_MS = 2000
CAMERA_PROCESS_POLL_S = 0.2
FALLBACK_FPS = 25.0
"""Used when a file does not declare its frame rate."""


class CaptureError(RuntimeError):
    """A source cannot be read; the message names it."""


@dataclass(frozen=True)
class SourceSpec:
    """What one capture thread reads and how."""

    camera: str
    source: str | int
    fps: float | None = None
    realtime: bool = False
    phase: float = 0.0
    """Share of the sampling period (``1 / fps``) by which this source's paced frames are sent late,
    so a host's cameras reach inference spread over the period, not all in the same instant
    (``spread_phases``). Live cameras and realtime files only; a replay runs as fast as it can."""

    @property
    def kind(self) -> SourceKind:
        return "live" if is_live_source(self.source) else "replay"

    @property
    def paced(self) -> bool:
        """Sent at the pace of time (a camera, a realtime file), not as fast as inference takes it."""
        return self.kind == "live" or self.realtime

    @classmethod
    def from_camera(cls, camera: CameraConfig) -> SourceSpec:
        return cls(camera=camera.id, source=camera.source, fps=camera.fps, realtime=camera.realtime)


def spread_phases(specs: list[SourceSpec]) -> list[SourceSpec]:
    """The paced sources' sampling instants spread over the period: source i of N paced ones at i/N.

    Cameras started together sample on the same clock, so at 5 fps every camera's frame would reach
    inference in the same instant, five times a second, and the last of N waits for the N - 1 before
    it. Spread, each frame finds inference free more often (8 cameras at 720p/5 fps on 2 cores,
    p50 / p95: v2 69 / 117 -> 25 / 76 ms, v4 134-153 / 467-664 -> 34-49 / 241-440 ms; bench/README.md).
    Unpaced sources (replays) keep phase 0.
    """
    paced = [spec for spec in specs if spec.paced]
    phase = {spec.camera: index / len(paced) for index, spec in enumerate(paced)}
    return [replace(spec, phase=phase[spec.camera]) if spec.camera in phase else spec for spec in specs]


@dataclass
class CaptureStats:
    """Counters the supervisor reads for progress and the replay report."""

    sent: int = 0
    dropped: int = 0
    reconnects: int = 0
    """Live sources: times the stream was lost or could not be opened after it had been."""
    last_frame_ns: int | None = None
    """UTC time of the last frame read for sending (sent or dropped): the camera is delivering."""
    expected: int | None = None
    copies: int = 0
    """Pixel copies made sending frames (``pipeline.copies.capture_copies``): 0 for real camera frames."""
    state: str = "starting"
    error: str | None = None
    finished: bool = False


class CaptureThread(threading.Thread):
    """Reads one source until it ends or ``stop`` is set, then sends its EOS."""

    def __init__(
        self,
        spec: SourceSpec,
        ctx: zmq.Context,
        endpoint: str,
        hwm: int,
        policy: CaptureConfig,
        stop: threading.Event,
        curve: CurveKeys | None = None,
        *,
        control: str,
    ) -> None:
        super().__init__(name=f"capture-{spec.camera}", daemon=True)
        self.curve = curve
        self.spec, self.ctx, self.endpoint, self.hwm, self.policy, self.stop = spec, ctx, endpoint, hwm, policy, stop
        self.control = control
        self.control_curve: CurveKeys | None = None
        """Curve keys of the control link: set when the end of stream goes to a remote incidents stage
        (`scratchwatch stage capture`); the supervisor's own control channel is local."""
        self.linger_ms = 0
        """How long the frames socket keeps delivering after the end: 0 once acknowledged (the
        supervisor's inference confirms every frame); a capture stage on its own lingers instead."""
        self.acked = threading.Event()
        """Set by whoever reads inference's acknowledgement (the supervisor): every frame arrived."""
        self.stats = CaptureStats()
        self.source_text = redact(spec.source)  # once: it is in every frame header
        self.abort = threading.Event()
        """Set when the pipeline downstream is gone: no EOS, no lingering on undeliverable frames."""
        self._drops = RateLimitedLog(log, 10.0)

    def run(self) -> None:
        sock = push_socket(self.ctx, self.endpoint, self.hwm, curve=self.curve)
        sock.setsockopt(zmq.SNDTIMEO, EOS_TIMEOUT_MS)
        try:
            if self.spec.kind == "live":
                self._run_live(sock)
            else:
                self._run_file(sock)
        except CaptureError as exc:
            self.stats.error = str(exc)
            log.error("%s", exc)
        except Exception as exc:  # a capture bug must still end the source cleanly
            self.stats.error = f"camera {self.spec.camera}: capture failed: {exc!r}"
            log.exception("camera %s: capture failed", self.spec.camera)
        finally:
            if not self.abort.is_set():
                self._end_stream()
            sock.close(linger=0 if self.abort.is_set() else self.linger_ms)  # acknowledged: nothing is left in flight; aborted: nobody listens
            self.stats.finished = True

    def _run_file(self, sock: zmq.Socket) -> None:
        path = Path(str(self.spec.source))
        cap = open_file(path)
        try:
            src_fps = _file_fps(cap)
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self.stats.expected = _sampled_count(total, src_fps, self.spec.fps) if total > 0 else None
            self.stats.state = "reading"
            decoded = self._pump_file(sock, cap, src_fps)
        finally:
            cap.release()
        if decoded == 0 and not self.stop.is_set():  # stopped before the first frame is not corrupt
            raise CaptureError(f"video file {path}: no frame could be decoded (corrupt or unsupported format)")
        if total and decoded < total * 0.9 and not self.stop.is_set():  # container counts are not exact
            raise CaptureError(f"video file {path}: decoding stopped after {decoded} of {total} frames (truncated or corrupt)")

    def _pump_file(self, sock: zmq.Socket, cap: cv2.VideoCapture, src_fps: float) -> int:
        """Send the frames that fall in new ``fps`` slots of media time; return frames decoded."""
        start = time.monotonic() + self.spec.phase / (self.spec.fps or src_fps)
        index, last_slot = -1, -1
        while not self.stop.is_set() and cap.grab():
            index += 1
            media_time = index / src_fps
            slot = math.floor(media_time * self.spec.fps + 1e-6) if self.spec.fps else index
            if slot <= last_slot:
                continue
            last_slot = slot
            ok, image = cap.retrieve()
            if not ok:
                continue
            if self.spec.realtime:
                self.stop.wait(max(0.0, start + media_time - time.monotonic()))
            if not send_until(sock, self._frame(image, media_time), self.stop):
                break
            self.stats.sent += 1
        return index + 1

    def _run_live(self, _sock: zmq.Socket) -> None:
        """Read the camera in its own process, restarted (with backoff) if it dies; stop it when asked."""
        counters = RawArray("q", len(_SHARED_FIELDS))  # written by the camera process
        backoff = Backoff(self.policy.reconnect_initial_s, self.policy.reconnect_max_s, self.policy.reconnect_jitter)
        while not self.stop.is_set():
            code = self._camera_process(counters)
            if code is not None and not self.stop.is_set():
                log.error("camera %s: its capture process died (exit code %s); restarting it", self.spec.camera, code)
                self.stop.wait(backoff.next())

    def _camera_process(self, counters: Any) -> int | None:
        """One camera process until it exits (its exit code) or ``stop`` is set (None)."""
        spawn = multiprocessing.get_context("spawn")
        child_stop = spawn.Event()
        child = spawn.Process(
            target=live_capture_main,
            args=(self.spec, self.endpoint, self.hwm, self.policy, child_stop, counters, logging.getLogger().level, os.getpid(),
                  self.curve),
            name=f"scratchwatch-camera-{self.spec.camera}",
            daemon=True,
        )
        child.start()
        try:
            while not self.stop.wait(CAMERA_PROCESS_POLL_S) and child.is_alive():
                _SharedStats.copy_to(counters, self.stats)
        finally:
            child_stop.set()
            child.join(self.policy.open_timeout_s + 2)  # a hung FFmpeg call returns within its timeout
            if child.is_alive():
                child.kill()
                child.join(5)
            _SharedStats.copy_to(counters, self.stats)
        return None if self.stop.is_set() else child.exitcode

    def read_live(self, sock: zmq.Socket) -> None:
        """The camera loop, run inside the camera's process: open, pump, reconnect with backoff."""
        backoff = Backoff(self.policy.reconnect_initial_s, self.policy.reconnect_max_s, self.policy.reconnect_jitter)
        while not self.stop.is_set():
            cap = open_live(self.spec.source, self.policy.open_timeout_s)
            if not cap.isOpened():
                self._set_state("unreachable", f"retrying, backoff up to {self.policy.reconnect_max_s:g}s")
                self.stop.wait(backoff.next())
                continue
            self._set_state("connected")
            backoff.reset()
            try:
                self._pump_live(sock, cap)
            finally:
                cap.release()
            if not self.stop.is_set():
                self.stats.reconnects += 1
                self._set_state("lost", "reconnecting")
                self.stop.wait(backoff.next())

    def _pump_live(self, sock: zmq.Socket, cap: cv2.VideoCapture) -> None:
        """Keep decoding (so the stream's buffer never ages), send at ``fps`` by wall clock."""
        period = 1 / self.spec.fps if self.spec.fps else 0.0
        next_due = time.monotonic() + self.spec.phase * period
        while not self.stop.is_set() and cap.grab():
            now = time.monotonic()
            if now < next_due:
                continue
            next_due = now + period if now - next_due > period else next_due + period
            ok, image = cap.retrieve()
            if ok and self.send_live(sock, image):
                self.stats.sent += 1

    def send_live(self, sock: zmq.Socket, image: np.ndarray) -> bool:
        """Never wait: when inference is behind, this frame is dropped and counted."""
        if send(sock, self._frame(image, None), block=False):
            return True
        self.stats.dropped += 1
        self._drops.warning("drop", "camera %s: inference busy, dropped %d frames so far", self.spec.camera, self.stats.dropped)
        return False

    def _frame(self, image: np.ndarray, media_time: float | None) -> list:
        self.stats.last_frame_ns = now_ns()
        header = FrameHeader(
            camera=self.spec.camera,
            kind=self.spec.kind,
            source=self.source_text,
            seq=self.stats.sent,
            captured_ns=self.stats.last_frame_ns,
            media_time_s=media_time,
            shape=image.shape,
            encoding=self.policy.frame_encoding,
        )
        if header.encoding == "raw":  # a JPEG is an encoding of the pixels, not a copy of them
            self.stats.copies += capture_copies(image)
        return encode_frame(header, image, jpeg_quality=self.policy.jpeg_quality)

    def _set_state(self, state: str, detail: str = "") -> None:
        """Log transitions only, so a camera that stays down does not flood the log."""
        if state == self.stats.state:
            return
        self.stats.state = state
        level = logging.INFO if state == "connected" else logging.WARNING
        log.log(level, "camera %s (%s): %s%s", self.spec.camera, self.source_text, state, f"; {detail}" if detail else "")

    def _end_stream(self) -> None:
        """EOS on the control channel, then wait until inference confirms every frame arrived."""
        eos = EosHeader(camera=self.spec.camera, kind=self.spec.kind, source=self.source_text, error=self.stats.error,
                        frames=self.stats.sent)
        control = push_socket(self.ctx, self.control, 1, curve=self.control_curve)
        control.setsockopt(zmq.SNDTIMEO, EOS_TIMEOUT_MS)
        try:
            send(control, encode_control(eos))
        except zmq.Again:
            log.error("camera %s: inference did not take the end-of-stream within %d ms", self.spec.camera, EOS_TIMEOUT_MS)
            return
        finally:
            control.close(linger=EOS_TIMEOUT_MS)
        live = self.spec.kind == "live"
        timeout_s = LIVE_ACK_TIMEOUT_S if live else ACK_TIMEOUT_S
        deadline = time.monotonic() + timeout_s
        while not self.acked.wait(0.1):
            if self.abort.is_set():
                return
            if time.monotonic() > deadline:
                log.log(logging.INFO if live else logging.ERROR, "camera %s: inference did not confirm the end of the "
                        "stream within %.0f s; frames may be missing", self.spec.camera, timeout_s)
                return
        log.debug("camera %s: end of stream acknowledged after %d frames", self.spec.camera, self.stats.sent)


_SHARED_FIELDS = ("sent", "dropped", "reconnects", "copies", "state")
_STATES = ("starting", "connected", "unreachable", "lost")


class _SharedStats(CaptureStats):
    """A camera process's CaptureStats, mirrored into shared memory for its capture thread."""

    def __init__(self, counters: Any) -> None:
        super().__init__(**_SharedStats.read(counters))  # a restarted process goes on counting
        self.__dict__["_counters"] = counters

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _SHARED_FIELDS and "_counters" in self.__dict__:
            self._counters[_SHARED_FIELDS.index(name)] = _STATES.index(value) if name == "state" else value

    @staticmethod
    def read(counters: Any) -> dict[str, Any]:
        values = dict(zip(_SHARED_FIELDS, counters))
        return {**values, "state": _STATES[values["state"]]}

    @staticmethod
    def copy_to(counters: Any, stats: CaptureStats) -> None:
        for name, value in _SharedStats.read(counters).items():
            setattr(stats, name, value)


def live_capture_main(
    spec: SourceSpec,
    endpoint: str,
    hwm: int,
    policy: CaptureConfig,
    stop: Any,
    counters: Any,
    level: int,
    parent_pid: int,
    curve: CurveKeys | None = None,
) -> None:
    """A camera process (spawn target): reads one live source and pushes its frames to inference.

    It stops when ``stop`` is set or its parent is gone; SIGINT/SIGTERM are the supervisor's.
    """
    setup_logging(level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_stop_when_orphaned, args=(stop, parent_pid), daemon=True).start()
    ctx = zmq.Context()
    reader = CaptureThread(spec, ctx, endpoint, hwm, policy, stop, curve, control="")
    reader.stats = _SharedStats(counters)
    sock = push_socket(ctx, endpoint, hwm, curve=curve)
    try:
        reader.read_live(sock)
    finally:
        sock.close(linger=LIVE_LINGER_MS)  # frames already queued reach inference before the EOS is counted
        ctx.term()


def _stop_when_orphaned(stop: Any, parent_pid: int) -> None:
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            stop.set()


def open_file(path: Path) -> cv2.VideoCapture:
    """Open a video file or raise CaptureError naming it."""
    if not path.is_file():
        raise CaptureError(f"video file {path}: not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise CaptureError(f"video file {path}: OpenCV cannot open it (corrupt or unsupported format)")
    return cap


def open_live(source: str | int, timeout_s: float) -> cv2.VideoCapture:
    """A device index, or a URL through FFmpeg with bounded open/read timeouts."""
    if isinstance(source, int):
        return cv2.VideoCapture(source)
    timeout_ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)


def redact(source: str | int) -> str:
    """The source for logs and messages, with any URL password masked."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", str(source))


def _file_fps(cap: cv2.VideoCapture) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if fps and math.isfinite(fps) and fps > 0 else FALLBACK_FPS


def _sampled_count(total: int, src_fps: float, fps: float | None) -> int:
    """How many frames the media-time sampling will send out of ``total``."""
    if not fps or fps >= src_fps:
        return total
    return math.floor((total - 1) / src_fps * fps + 1e-6) + 1
