"""What ``scratchwatch run`` adds around the pipeline when it runs as a daemon."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.runner import STAGES, Observer


def daemon_observers(settings: Settings) -> list[Observer]:
    """The systemd watchdog (a no-op outside systemd), the retention cleanup and the metrics endpoint."""
    from app.metrics import MetricsExporter
    from app.retention import RetentionJob
    from app.systemd import ServiceWatchdog

    observers: list[Observer] = [ServiceWatchdog.from_environment(STAGES)]
    retention = RetentionJob(settings) if settings.retention.enabled else None
    if retention is not None:
        observers.append(retention)
    if settings.metrics.enabled:
        metrics = MetricsExporter(settings.metrics, retention)
        metrics.start()
        observers.append(metrics)
    return observers
