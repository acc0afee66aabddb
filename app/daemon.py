"""What ``scratchwatch run`` adds around the pipeline when it runs as a daemon."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.runner import STAGES, Observer


def daemon_observers(settings: Settings) -> list[Observer]:
    """The systemd watchdog (a no-op outside systemd) and the retention cleanup."""
    from app.retention import RetentionJob
    from app.systemd import ServiceWatchdog

    observers: list[Observer] = [ServiceWatchdog.from_environment(STAGES)]
    if settings.retention.enabled:
        observers.append(RetentionJob(settings))
    return observers
