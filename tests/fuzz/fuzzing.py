"""The hypothesis settings every fuzz test runs under."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz_settings(examples: int) -> settings:
    """`examples` inputs, the same ones on every run (derandomized, no example database), with
    no per-example deadline: CI time is bounded by the count, not by a flaky clock."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
