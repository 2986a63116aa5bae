"""The watched file source with real files: writes, atomic rename, ConfigMap symlink swap,
delete-then-restore, invalid content (the old snapshot keeps serving)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.delivery.apply import Applier, Outcome
from sidecar.delivery.store import Store
from sidecar.sources.file import FileSource
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.waiting import wait_for


def _doc(version: int, treatment: str = "on") -> str:
    return json.dumps(
        snapshot_doc(flag("f", condition(partitions={treatment: 100})), version=version)
    )


class Watched:
    def __init__(self, path: Path) -> None:
        self.store = Store()
        self.refused: list[Outcome] = []
        self.source = FileSource(
            path, Applier(self.store, on_refused=[self.refused.append]), recheck_ms=500
        )

    def version(self) -> int | None:
        return self.store.current.version if self.store.current else None


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    path = tmp_path / "snapshot.json"
    path.write_text(_doc(1))
    w = Watched(path)
    outcome = w.source.load()
    assert outcome is not None and outcome.applied
    w.source.start()
    yield w
    w.source.stop()


def test_in_place_write_reloads(watched: Watched) -> None:
    watched.source.path.write_text(_doc(2, "v2"))
    wait_for(lambda: watched.version() == 2)
    assert watched.store.current is not None
    assert watched.store.current.evaluate("k", "f").treatment == "v2"


def test_atomic_rename_reloads(watched: Watched, tmp_path: Path) -> None:
    tmp = tmp_path / ".snapshot.json.tmp"
    tmp.write_text(_doc(2))
    os.replace(tmp, watched.source.path)
    wait_for(lambda: watched.version() == 2)
    tmp.write_text(_doc(3))
    os.replace(tmp, watched.source.path)
    wait_for(lambda: watched.version() == 3)


def test_invalid_content_is_refused_and_old_keeps_serving(watched: Watched) -> None:
    watched.source.path.write_text('{"version": 2, "flags": [{"name": "f"}]}')
    wait_for(lambda: len(watched.refused) == 1)
    assert watched.version() == 1
    assert watched.refused[0].reason == "invalid"
    assert any("defaultTreatment" in str(issue) for issue in watched.refused[0].errors)
    watched.source.path.write_text(_doc(3))
    wait_for(lambda: watched.version() == 3)


def test_delete_then_restore(watched: Watched) -> None:
    watched.source.path.unlink()
    time.sleep(0.5)
    assert watched.version() == 1  # still serving
    watched.source.path.write_text(_doc(4))
    wait_for(lambda: watched.version() == 4)


def test_half_written_file_is_not_applied(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    text = _doc(1)
    path.write_text(text[: len(text) // 2])
    w = Watched(path)
    w.source.settle_seconds = 0.2
    w.source.start()
    try:
        with path.open("a") as handle:  # the writer finishes within the settle window
            handle.write(text[len(text) // 2 :])
        wait_for(lambda: w.version() == 1)
    finally:
        w.source.stop()


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes: snapshot.json -> ..data/snapshot.json, ..data -> ..<timestamp> (swapped)."""
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(name: str, content: str) -> None:
        directory = mount / name
        directory.mkdir()
        (directory / "snapshot.json").write_text(content)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(name)
        os.replace(tmp_link, mount / "..data")

    publish("..2026_11_26_1", _doc(1))
    (mount / "snapshot.json").symlink_to("..data/snapshot.json")
    w = Watched(mount / "snapshot.json")
    assert w.source.load() is not None
    w.source.start()
    try:
        publish("..2026_11_26_2", _doc(2, "v2"))
        wait_for(lambda: w.version() == 2)
        publish("..2026_11_26_3", _doc(3, "v3"))
        wait_for(lambda: w.version() == 3)
    finally:
        w.source.stop()
