"""Memory under churn, on a real `fader serve`: snapshots pushed back to back must not pile up.

Before the fix, the reaper freed one object per offer of the GIL and waited a whole switch
interval for each while the next snapshot was being built: 100 pushes of a 2,000-flag
snapshot left 1,146 MB resident. Now RSS after any number of pushes stays within a small
multiple of what one loaded snapshot costs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.churn import big_snapshot, pushable_sidecar, rss_mb
from tests.integration.harness import short_tmp

FLAGS = 1000
FEW, MANY = 8, 32


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def test_rss_after_many_pushes_is_bounded_by_a_few_snapshots(tmp: Path) -> None:
    documents = {version: big_snapshot(version, FLAGS) for version in range(1, MANY + 2)}
    with pushable_sidecar(tmp) as sidecar:
        time.sleep(0.5)
        empty = rss_mb(sidecar.pid)
        sidecar.pusher.push(1, documents[1])
        time.sleep(1.0)  # whatever the first load left behind is freed
        one = rss_mb(sidecar.pid) - empty
        after: dict[int, float] = {}
        for version in range(2, MANY + 2):
            sidecar.pusher.push(version, documents[version])
            if version - 1 in (FEW, MANY):
                after[version - 1] = rss_mb(sidecar.pid)
    print(
        f"\n[memory under churn] {FLAGS}-flag msgpack snapshot ({len(documents[1]) >> 10} KiB): "
        f"RSS empty {empty:.0f} MB, one snapshot loaded +{one:.0f} MB; right after {FEW} "
        f"pushes {after[FEW]:.0f} MB, after {MANY} pushes {after[MANY]:.0f} MB"
    )
    assert one > 0
    # the active snapshot, the one being built and the allocator's slack: never more
    assert after[MANY] - empty <= 4 * one, after
    # and not growing with the number of pushes
    assert after[MANY] - after[FEW] <= one, after
