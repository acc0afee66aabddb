"""What every stage process shares: logging, signals, the events channel, parent watch.

Stages run in spawned processes. They ignore SIGINT/SIGTERM on purpose: shutdown is the
supervisor's job (it stops capture, then sends STOP in-band so frames in flight are drained);
a stage exits on STOP, or on its own when the supervisor has died.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from pipeline.config import Settings
from pipeline.logs import setup_logging
from pipeline.messages import EventHeader, encode_control
from pipeline.transport import Endpoints, close_context, push_socket, send

log = logging.getLogger(__name__)
EVENTS_HWM = 100
FINAL_EVENT_TIMEOUT_MS = 5000
HEARTBEAT_INTERVAL_S = 1.0


class Histogram:
    """Cumulative bucket counts a stage reports in its heartbeats (Prometheus-style ``le`` buckets)."""

    BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS_S)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum_s += seconds
        for index, bound in enumerate(self.BOUNDS_S):
            if seconds <= bound:
                self.counts[index] += 1

    def snapshot(self) -> dict[str, Any]:
        return {"bounds_s": list(self.BOUNDS_S), "counts": list(self.counts), "count": self.count, "sum_s": self.sum_s}


class EventSender:
    """Stage -> supervisor notices; progress never blocks a stage, final events wait a little."""

    def __init__(self, ctx: zmq.Context, endpoint: str, stage: str) -> None:
        self.stage = stage
        self.sock = push_socket(ctx, endpoint, EVENTS_HWM)
        self.sock.setsockopt(zmq.SNDTIMEO, FINAL_EVENT_TIMEOUT_MS)
        self._last_beat = 0.0
        self.stats_source: Callable[[], dict[str, Any]] | None = None
        """The stage's counters, sent with each heartbeat (the supervisor's metrics read them)."""

    def emit(self, event: str, *, final: bool = False, **data: Any) -> None:
        parts = encode_control(EventHeader(stage=self.stage, event=event, data=data))
        try:
            send(self.sock, parts, block=final)
        except zmq.Again:
            log.warning("%s: supervisor did not take the %s event", self.stage, event)

    def beat(self, **counters: Any) -> None:
        """Called from a stage's work loop (its Receiver polls), so a stuck loop stops beating.

        The supervisor's systemd watchdog pings only while every stage beats; a timer thread
        would keep beating through a hung detector call and hide exactly what it must reveal.
        """
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_INTERVAL_S:
            self._last_beat = now
            self.emit("heartbeat", **{**counters, **(self.stats_source() if self.stats_source else {})})


@dataclass
class StageContext:
    settings: Settings
    endpoints: Endpoints
    ctx: zmq.Context
    events: EventSender
    parent_pid: int
    stop: threading.Event | None = None
    """A stage started on its own (`scratchwatch stage`, no supervisor): set by its SIGTERM/SIGINT."""

    @property
    def standalone(self) -> bool:
        return self.stop is not None

    def parent_alive(self) -> bool:
        """A stage outliving a killed supervisor would hold sockets and the model forever; on its own: until signalled."""
        if self.stop is not None:
            return not self.stop.is_set()
        return os.getppid() == self.parent_pid


StageBody = Callable[[StageContext], dict[str, Any]]


def run_stage(name: str, settings: Settings, endpoints: Endpoints, parent_pid: int, body: StageBody) -> None:
    """Process entry point: run ``body``, report ``done`` with its stats or ``error``, exit."""
    setup_logging(settings.logging.level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = zmq.Context()
    events = EventSender(ctx, endpoints.events, name)
    code = 0
    try:
        stats = body(StageContext(settings, endpoints, ctx, events, parent_pid))
        events.emit("done", final=True, **stats)
    except Exception as exc:
        log.error("%s stage failed: %s", name, exc)  # the supervisor repeats it; the traceback is for -v
        log.debug("%s stage failure", name, exc_info=True)
        events.emit("error", final=True, message=str(exc) or repr(exc))
        code = 1
    finally:
        close_context(ctx, FINAL_EVENT_TIMEOUT_MS)
    sys.exit(code)
