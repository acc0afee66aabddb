"""What ``scratchwatch run`` adds around the pipeline when it runs as a daemon."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.runner import STAGES, Observer


def daemon_observers(settings: Settings) -> list[Observer]:
    """The systemd watchdog (a no-op outside systemd)."""
    from app.systemd import ServiceWatchdog

    return [ServiceWatchdog.from_environment(STAGES)]
