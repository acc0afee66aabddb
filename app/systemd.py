"""systemd integration: sd_notify over the plain datagram protocol, and the watchdog policy.

The protocol is one AF_UNIX datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET`` (a leading
``@`` means the abstract namespace); it is small enough that a dependency would add more than
it saves. Outside systemd there is no ``NOTIFY_SOCKET`` and every call is a cheap no-op.

The watchdog is only useful if it says "making progress", not "the process exists": the
supervisor pings ``WATCHDOG=1`` only while every stage has sent an event (a heartbeat from its
work loop, or progress) within ``stall_s``. A stage stuck in a call stops its heartbeats, the
pings stop, and systemd restarts the service after ``WatchdogSec``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
DEFAULT_STALL_S = 30.0
"""Without a systemd watchdog: how long a silent stage counts as stalled (for status and metrics)."""


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd (no socket)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.get(NOTIFY_SOCKET_ENV) or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when there is no socket or it failed."""
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | bytes:
    """``@name`` is Linux's abstract namespace: a leading NUL byte on the wire."""
    return b"\0" + address[1:].encode() if address.startswith("@") else address


def watchdog_timeout_s(environ: dict[str, str] | None = None) -> float | None:
    """``WatchdogSec`` as systemd passes it (``WATCHDOG_USEC``), when it is meant for this process."""
    environ = os.environ if environ is None else environ
    usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class ServiceWatchdog:
    """A supervisor observer: READY=1 once the stages are up, WATCHDOG=1 while all make progress.

    Pings go out every third of the watchdog timeout, so a late ping never costs a restart;
    a stage silent for ``stall_s`` (half the timeout) stops them.
    """

    def __init__(self, notifier: Notifier, stages: Iterable[str], timeout_s: float | None) -> None:
        self.notifier = notifier
        self.stages = tuple(stages)
        self.timeout_s = timeout_s
        self.stall_s = timeout_s / 2 if timeout_s else DEFAULT_STALL_S
        self.last_seen: dict[str, float] = {}
        self.pings = 0
        self._last_ping = 0.0
        self._stalled_logged: frozenset[str] = frozenset()

    @classmethod
    def from_environment(cls, stages: Iterable[str]) -> ServiceWatchdog:
        return cls(Notifier.from_environment(), stages, watchdog_timeout_s())

    def on_ready(self, supervisor: Any = None) -> None:
        now = time.monotonic()
        for stage in self.stages:
            self.last_seen.setdefault(stage, now)
        self.notifier.notify(READY=1, STATUS=f"analysing; stages up: {_stage_pids(supervisor, self.stages)}")

    def on_event(self, stage: str, event: str, data: dict[str, Any] | None = None) -> None:
        self.last_seen[stage] = time.monotonic()

    def on_tick(self, supervisor: Any = None) -> None:
        now = time.monotonic()
        restarting = getattr(supervisor, "restarting", set())  # the supervisor's restart policy bounds those
        stalled = [stage for stage in self.stalled(now) if stage not in restarting]
        self._log_stalled(stalled)
        if stalled or not self.timeout_s or now - self._last_ping < self.timeout_s / 3:
            return
        if self.notifier.notify(WATCHDOG=1):
            self.pings += 1
        self._last_ping = now

    def on_stop(self, supervisor: Any = None) -> None:
        self.notifier.notify(STOPPING=1, STATUS="draining frames in flight, closing incidents")

    def stalled(self, now: float | None = None) -> list[str]:
        """Stages whose last event is older than ``stall_s`` (none before ``on_ready``)."""
        now = time.monotonic() if now is None else now
        return [s for s in self.stages if s in self.last_seen and now - self.last_seen[s] > self.stall_s]

    def _log_stalled(self, stalled: list[str]) -> None:
        """Once per change: why the pings stopped is the first thing an operator wants to read."""
        current = frozenset(stalled)
        if current != self._stalled_logged:
            if current:
                log.error("stage(s) %s silent for over %.0fs: watchdog pings withheld", sorted(current), self.stall_s)
            else:
                log.info("every stage is making progress again")
            self._stalled_logged = current


def _stage_pids(supervisor: Any, stages: tuple[str, ...]) -> str:
    """``inference (pid 123), ...``: which process to look at when one stalls."""
    pids = getattr(supervisor, "stage_pids", {})
    return ", ".join(f"{s} (pid {pids[s]})" if s in pids else s for s in stages)
