"""Last-known-good cache: atomic write, faithful reload, corrupt files refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from fader.snapshot.loader import load_bytes
from fader.snapshot.snapshot import Snapshot

from sidecar.delivery import cache
from tests.fader.rules.builders import condition, flag, snapshot_doc


def _encoded(version: int = 3) -> bytes:
    doc = snapshot_doc(
        flag("f", condition(partitions={"on": 50, "off": 50})),
        version=version,
        segments={"s": ["a", "b"]},
    )
    return json.dumps(doc).encode()


def _save(directory: Path, version: int = 3) -> tuple[Path, Snapshot]:
    data = _encoded(version)
    snapshot = load_bytes(data, "json", "file:/x.json")
    return cache.save(directory, snapshot, "json", data), snapshot


def test_round_trip_answers_identically(tmp_path: Path) -> None:
    _, original = _save(tmp_path)
    loaded = cache.load(tmp_path)
    assert loaded is not None
    assert loaded.version == 3
    assert loaded.source.startswith(f"cache:{tmp_path}") and "file:/x.json" in loaded.source
    for key in (f"k{i}" for i in range(100)):
        assert loaded.evaluate(key, "f") == original.evaluate(key, "f")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lkg-")]  # no temp left


def test_no_cache_is_none(tmp_path: Path) -> None:
    assert cache.load(tmp_path) is None


def test_newer_save_replaces(tmp_path: Path) -> None:
    _save(tmp_path, 3)
    _save(tmp_path, 4)
    loaded = cache.load(tmp_path)
    assert loaded is not None and loaded.version == 4


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda data: data[: len(data) // 2], "not a cache file"),
        (lambda data: b"garbage" + data, "not a cache file"),
    ],
)
def test_corrupt_cache_is_refused(
    tmp_path: Path, corrupt: Callable[[bytes], bytes], message: str
) -> None:
    path, _ = _save(tmp_path)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(cache.CacheError, match=message):
        cache.load(tmp_path)


def test_flipped_payload_byte_fails_the_checksum(tmp_path: Path) -> None:
    path, _ = _save(tmp_path)
    envelope = msgpack.unpackb(path.read_bytes(), raw=False)
    payload = bytearray(envelope["payload"])
    index = payload.index(b"off")
    payload[index] = ord("x")
    envelope["payload"] = bytes(payload)
    path.write_bytes(msgpack.packb(envelope, use_bin_type=True))
    with pytest.raises(cache.CacheError, match="checksum mismatch"):
        cache.load(tmp_path)


def test_sweep_removes_only_a_crash_s_temporary_files(tmp_path: Path) -> None:
    kept, _ = _save(tmp_path)
    (tmp_path / f"{cache.TMP_PREFIX}abc").write_bytes(b"half a snapshot")
    (tmp_path / "notes.txt").write_text("someone else's")
    removed = cache.sweep(tmp_path)
    assert [path.name for path in removed] == [f"{cache.TMP_PREFIX}abc"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [kept.name, "notes.txt"]
    assert cache.sweep(tmp_path / "missing") == []
