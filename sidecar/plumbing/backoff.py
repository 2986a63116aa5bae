"""Capped exponential backoff with jitter, for anything that retries a remote peer (the
control-plane stream, telemetry uploads)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """So that a fleet does not retry in lockstep: each delay is jittered around its base."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.multiplier**attempt)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)
