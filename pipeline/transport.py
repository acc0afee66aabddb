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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from pipeline.config import ConfigError, CurveConfig, Settings
from pipeline.logs import RateLimitedLog
from pipeline.messages import MalformedMessage, Message, decode

log = logging.getLogger(__name__)
IPC_PATH_MAX = 100
"""sockaddr_un holds 107 bytes; longer ipc paths fail to bind on Linux."""
LINGER_MS = 30_000
"""A closed PUSH socket keeps delivering (an EOS behind a few frames) this long in the background."""


HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
"""Monitor events of a refused peer: no key or the wrong server key (protocol), an unlisted key (auth)."""


@dataclass(frozen=True)
class CurveKeys:
    """This node's CurveZMQ identity and who it trusts; travels to the stages with the endpoints."""

    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes
    """The receiving stages' public key, for the sockets this node connects."""
    allowed: frozenset[bytes]
    """Public keys the sockets this node binds accept."""

    @classmethod
    def load(cls, config: CurveConfig) -> CurveKeys:
        """Read ``config.key_file``; ConfigError names the file when it is missing or not a key pair."""
        assert config.key_file is not None  # the config validator guarantees it when enabled
        try:
            public, secret = zmq.auth.load_certificate(config.key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"transport.curve.key_file {config.key_file}: cannot read a key pair ({exc})") from None
        if secret is None:
            raise ConfigError(f"transport.curve.key_file {config.key_file}: holds no secret key (use the .key_secret file)")
        server = config.server_key.encode() if config.server_key else public
        return cls(public, secret, server, frozenset({public, *(key.encode() for key in config.allowed_keys)}))


@dataclass(frozen=True)
class Endpoints:
    frames: str
    """capture -> inference (inference binds)"""
    detections: str
    """inference -> incidents (incidents binds)"""
    events: str
    """stages -> supervisor (supervisor binds)"""
    control: str
    """supervisor -> inference: EOS and STOP, never on the frames socket (inference binds)"""
    curve: CurveKeys | None = None
    """Set when the tcp links run CurveZMQ; every socket on frames/detections then uses it."""

    def remove_files(self) -> None:
        """libzmq leaves ipc socket files behind; the run that made them removes them."""
        for endpoint in (self.frames, self.detections, self.events, self.control):
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
            curve=CurveKeys.load(transport.curve) if transport.curve.enabled else None,
            control=_tcp("127.0.0.1", 0),
        )
    run_dir = settings.data_dir / "run"
    if len(str(run_dir)) + len(tag) + 20 > IPC_PATH_MAX:
        run_dir = Path(tempfile.mkdtemp(prefix="scratchwatch-"))
        log.info("data dir path too long for ipc sockets; using %s", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Endpoints(*(f"ipc://{run_dir}/{tag}-{name}.sock" for name in ("frames", "detections", "events", "control")))


def stage_endpoints(settings: Settings, stage: str, worker: int = 0) -> Endpoints:
    """Fixed endpoints of a stage started on its own (`scratchwatch stage`), from the config.

    tcp: incidents binds ``host:detections_port``; inference worker N binds ``host:frames_port + N``
    and connects to ``incidents_host``; capture connects to every worker on ``inference_host``
    (``worker_frames``) and sends its ends of streams to ``incidents_host``. ipc: the same links as
    sockets under ``<data_dir>/run`` (one host, separate units). Events and control stay inside the
    stage's own process (inproc).
    """
    transport = settings.transport
    if transport.kind == "tcp":
        if not transport.frames_port or not transport.detections_port:
            raise ConfigError("transport.frames_port and transport.detections_port must be fixed (not 0) "
                              "for stages started on their own: every node must know them")
        incidents_host = transport.host if stage == "incidents" else transport.incidents_host or transport.host
        frames = f"tcp://{transport.host}:{transport.frames_port + worker}"
        detections = f"tcp://{incidents_host}:{transport.detections_port}"
    else:
        run_dir = _stage_run_dir(settings)
        frames, detections = f"ipc://{run_dir}/stage-frames-{worker}.sock", f"ipc://{run_dir}/stage-detections.sock"
    curve = CurveKeys.load(transport.curve) if transport.curve.enabled else None
    tag = f"{os.getpid()}-{stage}-{worker}"
    return Endpoints(frames=frames, detections=detections, events=f"inproc://events-{tag}", control=f"inproc://control-{tag}",
                     curve=curve)


def worker_frames(settings: Settings) -> tuple[str, ...]:
    """Where a capture stage started on its own sends frames: every inference worker's endpoint."""
    transport = settings.transport
    workers = range(transport.inference_workers)
    if transport.kind == "tcp":
        host = transport.inference_host or transport.host
        return tuple(f"tcp://{host}:{transport.frames_port + n}" for n in workers)
    run_dir = _stage_run_dir(settings)
    return tuple(f"ipc://{run_dir}/stage-frames-{n}.sock" for n in workers)


def _stage_run_dir(settings: Settings) -> Path:
    run_dir = settings.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(str(run_dir)) + 30 > IPC_PATH_MAX:
        raise ConfigError(f"data_dir {settings.data_dir} is too long a path for ipc sockets: use a shorter one or transport.kind tcp")
    return run_dir


def _tcp(host: str, port: int) -> str:
    """Port 0 means any free port; it is chosen here so every stage knows it before binding."""
    if port == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    return f"tcp://{host}:{port}"


def pull_socket(ctx: zmq.Context, endpoint: str, hwm: int, *, bind: bool = True, curve: CurveKeys | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    _secure(ctx, sock, endpoint, curve, server=bind)
    sock.bind(endpoint) if bind else sock.connect(endpoint)
    return sock


def push_socket(
    ctx: zmq.Context, endpoint: str | tuple[str, ...], hwm: int, *, bind: bool = False, curve: CurveKeys | None = None
) -> zmq.Socket:
    """Several endpoints (inference workers): ZeroMQ hands each message to the next peer in turn that
    is connected and below its HWM (ZMQ_IMMEDIATE: nothing is queued for a worker that is down)."""
    endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    if len(endpoints) > 1:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    for index, address in enumerate(endpoints):
        if index == 0:
            _secure(ctx, sock, address, curve, server=bind)
        sock.bind(address) if bind else sock.connect(address)
    return sock


def _secure(ctx: zmq.Context, sock: zmq.Socket, endpoint: str, curve: CurveKeys | None, *, server: bool) -> None:
    """CurveZMQ on tcp links: the binding side is the server and asks ZAP about each client key."""
    if curve is None or not endpoint.startswith("tcp://"):
        return
    sock.curve_secretkey, sock.curve_publickey = curve.secret, curve.public
    if server:
        _authenticator(ctx).allow(curve.allowed)
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN
    else:
        sock.curve_serverkey = curve.server_public


ZAP_DOMAIN = b"scratchwatch"
_AUTHENTICATORS: dict[int, _KeyList] = {}


class _KeyList:
    """ZAP credentials provider: a client key is accepted only if it is listed."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.keys: set[bytes] = set()
        self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("scratchwatch.zap"))
        self.auth.start()
        self.auth.configure_curve_callback(ZAP_DOMAIN.decode(), credentials_provider=self)

    def allow(self, keys: frozenset[bytes]) -> None:
        self.keys |= keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def _authenticator(ctx: zmq.Context) -> _KeyList:
    """One ZAP handler per context (libzmq routes every ZAP request of a context to one socket)."""
    if id(ctx) not in _AUTHENTICATORS:
        _AUTHENTICATORS[id(ctx)] = _KeyList(ctx)
    return _AUTHENTICATORS[id(ctx)]


def close_context(ctx: zmq.Context, linger_ms: int) -> None:
    """Stop the context's ZAP thread (it owns a socket) before destroying the context."""
    keys = _AUTHENTICATORS.pop(id(ctx), None)
    if keys is not None:
        keys.auth.stop()
    ctx.destroy(linger=linger_ms)


def send(sock: zmq.Socket, parts: list[Any], *, block: bool = True) -> bool:
    """Send without copying the buffers; False when ``block`` is off and the HWM is reached."""
    try:
        sock.send_multipart(parts, flags=0 if block else zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def send_within(sock: zmq.Socket, parts: list[Any], timeout_s: float) -> bool:
    """Bounded send: False when the receiver did not take the message within ``timeout_s``."""
    return bool(sock.poll(int(timeout_s * 1000), zmq.POLLOUT)) and send(sock, parts, block=False)


def send_until(sock: zmq.Socket, parts: list[Any], stop: threading.Event, poll_ms: int = 100) -> bool:
    """Lossless send that still notices a stop request while the receiver is full."""
    while not stop.is_set():
        if sock.poll(poll_ms, zmq.POLLOUT) and send(sock, parts, block=False):
            return True
    return False


class Receiver:
    """Decodes messages from a PULL socket; malformed ones are counted, logged and skipped."""

    def __init__(self, sock: zmq.Socket, rate_limit_s: float, name: str, on_poll: Callable[..., None] | None = None) -> None:
        self.sock = sock
        self.name = name
        self.malformed = 0
        self.refused = 0
        """Peers refused by CurveZMQ: no key, the wrong server key, or a key not in allowed_keys."""
        self.on_poll = on_poll
        """Called on every receive with the counters: a stage's heartbeat (``EventSender.beat``) rides on its loop."""
        self._log = RateLimitedLog(log, rate_limit_s)
        self._monitor = sock.get_monitor_socket(HANDSHAKE_FAILED) if sock.getsockopt(zmq.CURVE_SERVER) else None

    def recv(self, timeout_ms: int) -> Message | None:
        """The next valid message, or None when nothing valid arrived within the timeout."""
        self._count_refused()
        if self.on_poll is not None:
            self.on_poll(malformed=self.malformed, refused=self.refused)
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

    def _count_refused(self) -> None:
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            self.refused += 1
            self._log.warning("refused", "%s: refused a peer on %s (handshake failed, event %#x): %d so far",
                              self.name, event["endpoint"].decode(errors="replace"), event["event"], self.refused)

    def _decode(self, parts: list[Any]) -> Message | None:
        try:
            return decode(parts)
        except MalformedMessage as exc:
            self.malformed += 1
            self._log.warning("malformed", "%s: skipped malformed message #%d: %s", self.name, self.malformed, exc)
            return None
