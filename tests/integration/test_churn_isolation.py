"""Isolation on a real `fader serve`: a consumer that is slow or stuck never costs another
client a lookup. Lookups are made with the clients' deadline (100 ms) while snapshots are
pushed; a lookup past the deadline is one a client answers "control".

Before the fix, every WatchChanges stream diffed each new snapshot against the one it had
reported, on the event loop, at every swap (~7 ms for 2,000 flags): with 300 streams that
were never read, 51 % of lookups missed their deadline during pushes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.churn import (
    LookupLoad,
    Lookups,
    Pushable,
    big_snapshot,
    pushable_sidecar,
    unread_watch_streams,
)
from tests.integration.harness import short_tmp

FLAGS = 1000
SWAPS = 8
STREAMS = 200


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def _lookups_during_swaps(sidecar: Pushable, documents: dict[int, bytes], first: int) -> Lookups:
    with LookupLoad(sidecar.grpc_target, "flag-1") as load:
        for version in range(first, first + SWAPS):
            sidecar.pusher.push(version, documents[version])
    return load.result


def _tolerated(baseline: Lookups) -> int:
    """Lookups past the deadline allowed beyond the baseline's: the noise of a shared
    2-core machine, far below what one stuck consumer used to cost."""
    return baseline.control + max(3, baseline.count // 50)


def test_unread_watch_streams_cost_no_lookup(tmp: Path) -> None:
    documents = {version: big_snapshot(version, FLAGS) for version in range(1, 2 * SWAPS + 2)}
    with pushable_sidecar(tmp) as sidecar:
        sidecar.pusher.push(1, documents[1])
        alone = _lookups_during_swaps(sidecar, documents, 2)
        with unread_watch_streams(sidecar.grpc_target, STREAMS):
            watched = _lookups_during_swaps(sidecar, documents, 2 + SWAPS)
    print(
        f"\n[isolation] {SWAPS} swaps of {FLAGS} flags; no stream: {alone.summary()}"
        f"\n[isolation] {STREAMS} unread WatchChanges streams: {watched.summary()}"
    )
    assert watched.count > 0 and alone.count > 0
    assert watched.control <= _tolerated(alone), (alone.summary(), watched.summary())
