"""--snapshot FILE|DIR applied to the store: on change only, never over later API changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidecar.controlplane.gitops import SnapshotFiles
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.storedb import SqliteDatabase
from tests.controlplane.flagd_docs import flagd_file, flagd_flag
from tests.fader.rules.builders import condition, flag, snapshot_doc


def write(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))


def doc(percent: int, *extra: dict[str, Any], version: int = 1) -> dict[str, Any]:
    rollout = condition(partitions={"on": percent, "off": 100 - percent})
    return snapshot_doc(flag("f", rollout), *extra, version=version)


def test_a_file_is_applied_when_its_content_changes(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write(path, doc(10, flag("g")))
    store = FlagStore(SqliteDatabase(tmp_path / "data"))
    files = SnapshotFiles(store, path)
    files.refresh()
    assert store.version == 1
    record = store.history()[0]
    assert record.author == f"file:{path}" and record.action == "apply"
    files.refresh()
    assert store.version == 1  # same bytes: nothing to do
    write(path, doc(20))  # g removed: the file is the whole set
    files.refresh()
    assert store.version == 2 and sorted(store.state.flags.flags) == ["f"]


def test_a_restart_does_not_reapply_an_unchanged_file_over_api_changes(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write(path, doc(10))
    store = FlagStore(SqliteDatabase(tmp_path / "data"))
    SnapshotFiles(store, path).refresh()
    store.dial("f", 50, author="alice", reason="by hand")
    store.db.close()
    restarted = FlagStore(SqliteDatabase(tmp_path / "data"))
    SnapshotFiles(restarted, path).refresh()
    assert restarted.version == 2
    assert restarted.state.flags.flags["f"]["conditions"][0]["partitions"][0]["size"] == 50


def test_an_invalid_file_changes_nothing_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write(path, doc(10))
    store = FlagStore(SqliteDatabase(tmp_path / "data"))
    files = SnapshotFiles(store, path)
    files.refresh()
    bad = doc(10)
    bad["flags"][0]["algo"] = 5
    write(path, bad)
    files.refresh()
    assert store.version == 1 and files.last_error is not None and "algo" in files.last_error
    write(path, doc(30))
    files.refresh()
    assert store.version == 2 and files.last_error is None


def test_a_folder_gives_its_newest_snapshot(tmp_path: Path) -> None:
    folder = tmp_path / "snapshots"
    folder.mkdir()
    write(folder / "a.json", doc(10, version=3))
    write(folder / "b.json", doc(40, version=8))
    store = FlagStore(SqliteDatabase(tmp_path / "data"))
    SnapshotFiles(store, folder).refresh()
    assert store.history()[0].author == f"file:{folder / 'b.json'}"
    assert store.state.flags.flags["f"]["conditions"][0]["partitions"][0]["size"] == 40


def test_a_plain_flagd_file_is_the_whole_set_and_a_bad_one_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.flagd.json"
    write(path, doc(10))
    store = FlagStore(SqliteDatabase(tmp_path / "data"))
    files = SnapshotFiles(store, path)
    files.refresh()
    write(path, flagd_file())  # the Split flag goes: the file is the whole set
    files.refresh()
    assert store.version == 2 and store.state.flags.flag_names() == ["color", "new-ui"]
    assert store.state.document()["flagd"]["$evaluators"] == flagd_file()["$evaluators"]
    write(path, flagd_file(broken=flagd_flag(default="maybe")))
    files.refresh()
    assert store.version == 2 and files.last_error is not None
    assert "flag 'broken' at $.flags[\"broken\"].defaultVariant" in files.last_error
    both = {**doc(30, version=7), "flagd": {**flagd_file(), "fractional": "v3"}}
    write(path, both)  # a snapshot with a flagd section, its fractional generation too
    files.refresh()
    assert store.version == 3 and files.last_error is None
    assert store.state.flags.flag_names() == ["color", "f", "new-ui"]
    assert store.state.document()["flagd"]["fractional"] == "v3"
