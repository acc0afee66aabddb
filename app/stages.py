"""`scratchwatch stage capture|inference[-N]|incidents`: one stage on its own, without the supervisor.

A site that outgrows one process (or one host) runs each stage as its own systemd unit
(``systemd/scratchwatch-stage@.service``) on the endpoints its config fixes
(``pipeline.transport.stage_endpoints``): capture nodes send frames, JPEG-encoded when
``capture.frame_encoding`` says so, to inference workers 0..N-1 (ZeroMQ hands each frame to the
next worker that is connected and below its high-water mark); every worker sends its detections
to the one incidents stage (``pipeline.fanin``), which puts each camera's frames back in order and
writes one database. Across hosts every link is CurveZMQ.

The stage's own code is the same as under the supervisor; what the supervisor did around it is
done here, in the stage's process: its events (ready, heartbeats) feed the systemd watchdog and
the metrics endpoint, and SIGTERM/SIGINT stop it cleanly (inference drains what it holds,
incidents closes every open incident and flushes, capture ends its files' streams).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import zmq

from pipeline.config import ConfigError, Settings
from pipeline.messages import EventHeader, StopHeader, encode_control
from pipeline.runner import Observer
from pipeline.stage import EventSender, StageContext
from pipeline.transport import LINGER_MS, Receiver, close_context, pull_socket, push_socket, send, stage_endpoints, worker_frames

log = logging.getLogger(__name__)
STAGE_NAME = re.compile(r"^(capture|incidents|inference)(?:-(\d+))?$")
POLL_MS = 100
METRICS_OFFSETS = {"incidents": 0, "capture": 1, "inference": 2}
"""Stages on one host share a config: each serves metrics on metrics.port + its offset (+ worker)."""


def parse_stage(text: str) -> tuple[str, int]:
    """``inference-2`` -> ("inference", 2); ``capture`` -> ("capture", 0). ValueError otherwise."""
    match = STAGE_NAME.match(text)
    if not match or (match.group(2) is not None and match.group(1) != "inference"):
        raise ValueError(f"unknown stage {text!r}: capture, incidents, inference or inference-N (worker N)")
    return match.group(1), int(match.group(2) or 0)


def metrics_port(settings: Settings, stage: str, worker: int) -> int:
    port = settings.metrics.port
    return port and port + METRICS_OFFSETS[stage] + (worker if stage == "inference" else 0)


def run_alone(settings: Settings, stage: str, worker: int, stop: threading.Event) -> int:
    """Run one stage until ``stop`` (or, for capture, until every file camera ended); the exit code."""
    if worker >= settings.transport.inference_workers:
        raise ConfigError(f"inference worker {worker} is not in transport.inference_workers "
                          f"({settings.transport.inference_workers}): capture would never send it a frame")
    observers = _observers(settings, stage, worker)
    if stage == "capture":
        return _run_capture(settings, stop, observers)
    return _run_stage(settings, stage, worker, stop, observers)


def _observers(settings: Settings, stage: str, worker: int) -> list[Observer]:
    from app.metrics import MetricsExporter
    from app.systemd import ServiceWatchdog

    observers: list[Observer] = [ServiceWatchdog.from_environment((stage,))]
    retention = None
    if stage == "incidents" and settings.retention.enabled:  # the stage that owns the database and the snapshots
        from app.retention import RetentionJob

        retention = RetentionJob(settings)
        observers.append(retention)
    if settings.metrics.enabled:
        config = settings.metrics.model_copy(update={"port": metrics_port(settings, stage, worker)})
        exporter = MetricsExporter(config, retention)
        exporter.start()
        observers.append(exporter)
    return observers


def _run_stage(settings: Settings, stage: str, worker: int, stop: threading.Event, observers: list[Observer]) -> int:
    from pipeline import incidents, inference

    body = {"incidents": incidents._serve, "inference": inference._serve}[stage]
    endpoints = stage_endpoints(settings, stage, worker)
    ctx = zmq.Context()
    watcher = _EventWatcher(ctx, endpoints.events, endpoints.control if stage == "inference" else None, stop, observers)
    watcher.start()
    watcher.bound.wait(10)
    events = EventSender(ctx, endpoints.events, stage)
    log.info("%s stage%s on its own: frames %s, detections %s%s", stage, f" (worker {worker})" if stage == "inference" else "",
             endpoints.frames if stage == "inference" else "-", endpoints.detections, ", CurveZMQ" if endpoints.curve else "")
    code = 0
    try:
        stats = body(StageContext(settings, endpoints, ctx, events, os.getpid(), stop=stop))
        log.info("%s stage finished: %s", stage, {k: v for k, v in stats.items() if k in ("frames", "incidents", "saved", "spooled")})
    except Exception as exc:
        log.error("%s stage failed: %s", stage, exc)
        log.debug("%s stage failure", stage, exc_info=True)
        code = 1
    finally:
        watcher.close()
        for observer in observers:
            observer.on_stop(None)
        close_context(ctx, LINGER_MS if stage == "inference" else 0)
    return code


class _EventWatcher(threading.Thread):
    """Reads the stage's own events (in-process) for the observers; on ``stop``, STOPs inference.

    Inference ends on a STOP on its control channel: it then forwards what it holds and exits,
    however busy the stream is (``fanin`` ignores the STOP it forwards). Incidents watches
    ``stop`` itself.
    """

    def __init__(self, ctx: zmq.Context, events: str, control: str | None, stop: threading.Event, observers: list[Observer]) -> None:
        super().__init__(name="stage-events", daemon=True)
        self.ctx, self.events, self.control, self.stop, self.observers = ctx, events, control, stop, observers
        self.bound = threading.Event()
        self._closed = threading.Event()

    def run(self) -> None:
        receiver = Receiver(pull_socket(self.ctx, self.events, 1000), 10.0, "stage events")
        self.bound.set()
        stop_sent = False
        try:
            while not self._closed.is_set():
                message = receiver.recv(POLL_MS)
                while message is not None:
                    if isinstance(message, EventHeader):
                        self._on_event(message)
                    message = receiver.recv(0)
                for observer in self.observers:
                    observer.on_tick(None)
                if self.stop.is_set() and self.control and not stop_sent:
                    control = push_socket(self.ctx, self.control, 1)
                    send(control, encode_control(StopHeader()))
                    control.close(linger=1000)
                    stop_sent = True
        finally:
            receiver.sock.close(0)

    def _on_event(self, event: EventHeader) -> None:
        if event.event == "ready":
            log.info("%s stage ready", event.stage)
            for observer in self.observers:
                observer.on_ready(None)
        for observer in self.observers:
            observer.on_event(event.stage, event.event, event.data)

    def close(self) -> None:
        self._closed.set()
        self.join(5)


def _run_capture(settings: Settings, stop: threading.Event, observers: list[Observer]) -> int:
    """Read every enabled camera, send frames to the workers and each end of stream to incidents."""
    from pipeline.capture import CaptureThread
    from pipeline.runner import camera_specs

    specs = camera_specs(settings)
    if not specs:
        raise ConfigError("no enabled camera in the config: add one under `cameras`")
    endpoints = stage_endpoints(settings, "capture")
    frames = worker_frames(settings)
    ctx = zmq.Context()
    capture_stop = threading.Event()
    threads: list[CaptureThread] = []
    for spec in specs:
        thread = CaptureThread(spec, ctx, frames, settings.transport.hwm, settings.capture, capture_stop,
                               curve=endpoints.curve, control=endpoints.detections)
        thread.control_curve = endpoints.curve  # the end of stream goes to the (remote) incidents stage
        thread.linger_ms = LINGER_MS  # nobody acknowledges: the socket delivers what it still holds
        thread.acked.set()
        threads.append(thread)
    log.info("capture stage on its own: %d camera(s) -> %s (%s frames), ends of streams -> %s%s", len(threads),
             ", ".join(frames), settings.capture.frame_encoding, endpoints.detections, ", CurveZMQ" if endpoints.curve else "")
    view = SimpleNamespace(captures=threads, results={}, stage_pids={"capture": os.getpid()})
    for thread in threads:
        thread.start()
    for observer in observers:
        observer.on_ready(view)
    try:
        while not stop.is_set() and not all(t.stats.finished for t in threads):
            for observer in observers:  # the loop is alive while it ticks: capture's heartbeat
                observer.on_event("capture", "heartbeat", {})
                observer.on_tick(view)
            time.sleep(POLL_MS / 1000)
    finally:
        for observer in observers:
            observer.on_stop(view)
        capture_stop.set()
        for thread in threads:
            thread.join()
        close_context(ctx, LINGER_MS)
    failed = [t.stats.error for t in threads if t.stats.error]
    for error in failed:
        log.error("%s", error)
    log.info("capture stage finished: %s", ", ".join(f"{t.spec.camera} {t.stats.sent} frames" for t in threads))
    return 1 if failed else 0


def cmd_stage(args: Any) -> int:
    from pipeline.cli import _settings, stop_on_signals
    from pipeline.preflight import check_cameras, check_data_dir, check_database_url, check_model

    stage, worker = args.stage
    settings = _settings(args)
    check_data_dir(settings.data_dir)
    if stage == "capture":
        check_cameras(settings)
    elif stage == "inference":
        check_model(settings.detector.model)
    else:
        check_database_url(settings.database_url)
    return run_alone(settings, stage, worker, stop_on_signals())
