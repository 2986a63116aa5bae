"""Encodings (JSON, msgpack) and document shapes (native, splitChanges 1.1 and 1.3)."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from fader.snapshot.loader import SnapshotError, build_snapshot, load_file

from tests.fader.rules.builders import flag, snapshot_doc
from tests.vectors import split_vector


def test_json_and_msgpack_files_load_the_same(tmp_path: Path) -> None:
    doc = snapshot_doc(flag("f"), version=5, segments={"s": ["a"]})
    (tmp_path / "s.json").write_text(json.dumps(doc))
    (tmp_path / "s.msgpack").write_bytes(msgpack.packb(doc))
    (tmp_path / "s.mpk").write_bytes(msgpack.packb(doc))
    snaps = [load_file(tmp_path / n) for n in ("s.json", "s.msgpack", "s.mpk")]
    assert {s.version for s in snaps} == {5}
    assert {s.evaluate("k", "f").treatment for s in snaps} == {"on"}
    assert snaps[0].source == f"file:{tmp_path / 's.json'}"


def test_split_changes_13_version_is_till() -> None:
    doc = json.loads(split_vector("fixtures/splitChanges.json").read_text())
    snap = build_snapshot(doc)
    assert snap.kind == "splitChanges 1.3"
    assert snap.version == max(doc["ff"]["t"], doc["rbs"]["t"])
    assert "whitelist_feature" in snap.flag_names()


def test_split_changes_11() -> None:
    doc = {"splits": [flag("f")], "since": 1, "till": 99}
    snap = build_snapshot(doc)
    assert (snap.version, snap.kind) == (99, "splitChanges 1.1")


def test_error_paths_follow_the_document_shape() -> None:
    bad = flag("f", seed="x")
    with pytest.raises(SnapshotError) as info:
        build_snapshot({"ff": {"d": [bad], "t": 3}})
    assert info.value.issues[0].path == "$.ff.d[0].seed"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[]", "a snapshot must be an object"),
        (b'{"hello": 1}', "not a snapshot"),
        (b'{"version": 1, "flags": {}}', "must be a list"),
    ],
)
def test_malformed_documents_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    with pytest.raises(SnapshotError, match=message):
        load_file(path)


def test_garbage_msgpack_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.msgpack"
    path.write_bytes(b"\xc1\xff\x00")
    with pytest.raises(SnapshotError, match="invalid msgpack"):
        load_file(path)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="cannot read"):
        load_file(tmp_path / "missing.json")
