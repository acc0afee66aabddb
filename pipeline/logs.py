"""Logging setup shared by the supervisor and the stage processes."""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Same format in every process: spawned stages start with a bare root logger."""
    logging.basicConfig(level=level, format=FORMAT, force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter at every start


class RateLimitedLog:
    """Log a repeating problem at most once per interval, with how often it happened meanwhile.

    A flood of malformed messages or dropped frames must not turn into a flood of log lines.
    """

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} more since the last report)" if suppressed else ""
        self._last[key] = now
        self.logger.warning(message + suffix, *args)
