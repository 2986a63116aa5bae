"""The file watcher reacts to the snapshot and its signature, not to its neighbours."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from sidecar.plumbing.filewatch import PathWatcher
from tests.waiting import wait_for


def test_only_the_watched_names_count_as_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = tmp_path / "snap.json"
    snapshot.write_text("{}")
    calls: list[float] = []
    watcher = PathWatcher(
        snapshot, lambda: calls.append(time.monotonic()), recheck_ms=60_000, names=["snap.json"]
    )
    caplog.set_level(logging.INFO, logger="watchfiles")
    watcher.start()
    try:
        time.sleep(0.3)  # the watch is set up
        log_file = tmp_path / "fader.log"
        for line in range(10):  # a log file written beside the snapshot
            with log_file.open("a") as handle:
                handle.write(f"line {line}\n")
            time.sleep(0.05)
        time.sleep(0.5)
        assert calls == []
        assert "change" not in caplog.text
        snapshot.write_text('{"version": 2}')
        wait_for(lambda: len(calls) == 1, what="the snapshot's change seen")
    finally:
        watcher.stop()
