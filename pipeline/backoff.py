"""Retry delays shared by camera reconnects and the database connection at start."""

from __future__ import annotations

import random


class Backoff:
    """Exponential reconnect delays, capped, each jittered by +/- ``jitter``."""

    def __init__(self, initial_s: float, max_s: float, jitter: float, rng: random.Random | None = None) -> None:
        self.initial_s, self.max_s, self.jitter = initial_s, max_s, jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.max_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return delay * (1 + self.jitter * self._rng.uniform(-1, 1))

    def reset(self) -> None:
        self.attempt = 0
