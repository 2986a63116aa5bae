"""Backoff: capped, exponential, jittered."""

from __future__ import annotations

from sidecar.plumbing.backoff import Backoff


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1, maximum=8, multiplier=2, jitter=0.25)
    delays = [backoff.delay(n) for n in range(10)]
    assert all(0.75 <= d <= 10 for d in delays)
    assert max(delays[5:]) <= 8 * 1.25
    assert len({round(backoff.delay(3), 6) for _ in range(20)}) > 1
