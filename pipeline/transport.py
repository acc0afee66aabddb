"""ZeroMQ plumbing between the stages: endpoints, PUSH/PULL sockets, zero-copy send and receive.

The downstream stage binds (it outlives its senders' reconnects); upstream connects. High-water
marks stay small so a slow stage pushes back on files (blocking) or makes live sources drop,
instead of queueing seconds of stale frames.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from pipeline.config import Settings
from pipeline.logs import RateLimitedLog
from pipeline.messages import MalformedMessage, Message, decode

log = logging.getLogger(__name__)
IPC_PATH_MAX = 100
"""sockaddr_un holds 107 bytes; longer ipc paths fail to bind on Linux."""
LINGER_MS = 30_000
"""A closed PUSH socket keeps delivering (an EOS behind a few frames) this long in the background."""


@dataclass(frozen=True)
class Endpoints:
    frames: str
    """capture -> inference (inference binds)"""
    detections: str
    """inference -> incidents (incidents binds)"""
    events: str
    """stages -> supervisor (supervisor binds)"""

    def remove_files(self) -> None:
        """libzmq leaves ipc socket files behind; the run that made them removes them."""
        for endpoint in (self.frames, self.detections, self.events):
            if endpoint.startswith("ipc://"):
                Path(endpoint[len("ipc://") :]).unlink(missing_ok=True)


def make_endpoints(settings: Settings, tag: str | None = None) -> Endpoints:
    """Fresh endpoints for one pipeline run; ``tag`` keeps concurrent runs apart."""
    tag = tag or f"sw{os.getpid()}"
    transport = settings.transport
    if transport.kind == "tcp":
        return Endpoints(
            frames=_tcp(transport.host, transport.frames_port),
            detections=_tcp(transport.host, transport.detections_port),
            events=_tcp("127.0.0.1", 0),
        )
    run_dir = settings.data_dir / "run"
    if len(str(run_dir)) + len(tag) + 20 > IPC_PATH_MAX:
        run_dir = Path(tempfile.mkdtemp(prefix="scratchwatch-"))
        log.info("data dir path too long for ipc sockets; using %s", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Endpoints(*(f"ipc://{run_dir}/{tag}-{name}.sock" for name in ("frames", "detections", "events")))


def _tcp(host: str, port: int) -> str:
    """Port 0 means any free port; it is chosen here so every stage knows it before binding."""
    if port == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    return f"tcp://{host}:{port}"


def pull_socket(ctx: zmq.Context, endpoint: str, hwm: int, *, bind: bool = True) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint) if bind else sock.connect(endpoint)
    return sock


def push_socket(ctx: zmq.Context, endpoint: str, hwm: int, *, bind: bool = False) -> zmq.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.bind(endpoint) if bind else sock.connect(endpoint)
    return sock


def send(sock: zmq.Socket, parts: list[Any], *, block: bool = True) -> bool:
    """Send without copying the buffers; False when ``block`` is off and the HWM is reached."""
    try:
        sock.send_multipart(parts, flags=0 if block else zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def send_until(sock: zmq.Socket, parts: list[Any], stop: threading.Event, poll_ms: int = 100) -> bool:
    """Lossless send that still notices a stop request while the receiver is full."""
    while not stop.is_set():
        if sock.poll(poll_ms, zmq.POLLOUT) and send(sock, parts, block=False):
            return True
    return False


class Receiver:
    """Decodes messages from a PULL socket; malformed ones are counted, logged and skipped."""

    def __init__(self, sock: zmq.Socket, rate_limit_s: float, name: str, on_poll: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.name = name
        self.malformed = 0
        self.on_poll = on_poll
        """Called on every receive: a stage's heartbeat (``EventSender.beat``) rides on its loop."""
        self._log = RateLimitedLog(log, rate_limit_s)

    def recv(self, timeout_ms: int) -> Message | None:
        """The next valid message, or None when nothing valid arrived within the timeout."""
        if self.on_poll is not None:
            self.on_poll()
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return self._decode(self.sock.recv_multipart(copy=False))

    def drain(self, timeout_ms: int, limit: int) -> list[Message]:
        """Wait for one message, then take whatever else is already waiting, up to ``limit``."""
        first = self.recv(timeout_ms)
        messages = [first] if first is not None else []
        while len(messages) < limit:
            try:
                parts = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            message = self._decode(parts)
            if message is not None:
                messages.append(message)
        return messages

    def _decode(self, parts: list[Any]) -> Message | None:
        try:
            return decode(parts)
        except MalformedMessage as exc:
            self.malformed += 1
            self._log.warning("malformed", "%s: skipped malformed message #%d: %s", self.name, self.malformed, exc)
            return None
