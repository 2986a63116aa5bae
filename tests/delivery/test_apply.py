"""The Applier: one path for every source, ACK or NACK, cache written on apply only."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.delivery import cache
from sidecar.delivery.apply import Applier, Outcome
from sidecar.delivery.store import Store
from tests.fader.rules.builders import flag, snapshot_doc


def _bytes(version: int, **fields: object) -> bytes:
    return json.dumps(snapshot_doc(flag("f", **fields), version=version)).encode()


def test_apply_then_refuse_invalid_then_stale(tmp_path: Path) -> None:
    store = Store()
    refused: list[Outcome] = []
    applier = Applier(store, cache_dir=tmp_path, on_refused=[refused.append])
    ok = applier.apply_bytes(_bytes(1), "json", "test")
    assert (ok.applied, ok.version) == (True, 1)
    bad = applier.apply_bytes(_bytes(2, seed="x"), "json", "test")
    assert (bad.applied, bad.reason, bad.version) == (False, "invalid", 2)
    assert any(issue.path == "$.flags[0].seed" for issue in bad.errors)
    stale = applier.apply_bytes(_bytes(1), "json", "test")
    assert (stale.applied, stale.reason) == (False, "stale")
    garbage = applier.apply_bytes(b"{", "json", "test")
    assert garbage.reason == "invalid"
    assert [o.reason for o in refused] == ["invalid", "stale", "invalid"]
    assert store.current is not None and store.current.version == 1
    cached = cache.load(tmp_path)
    assert cached is not None and cached.version == 1


def test_forced_rollback(tmp_path: Path) -> None:
    applier = Applier(Store())
    applier.apply_bytes(_bytes(5), "json", "a")
    assert applier.apply_bytes(_bytes(4), "json", "b", force=True).applied
    assert applier.store.current is not None and applier.store.current.version == 4


def test_unwritable_cache_does_not_refuse(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    applier = Applier(Store(), cache_dir=blocker / "sub")
    assert applier.apply_bytes(_bytes(1), "json", "a").applied


def test_a_cache_write_that_fails_is_served_reported_and_tracked(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    applier = Applier(Store(), cache_dir=cache_dir)
    assert applier.apply_bytes(_bytes(1), "json", "a").warnings == ()
    assert applier.cache_writes.status(1) == {
        "version": 1, "behind": False, "write_failures": 0, "last_write_error": None,
    }  # fmt: skip
    cache.path_in(cache_dir).unlink()  # the directory becomes a file: every write fails
    cache_dir.rmdir()
    cache_dir.write_text("not a directory")
    outcome = applier.apply_bytes(_bytes(2), "json", "b")
    assert outcome.applied and outcome.version == 2
    assert len(outcome.warnings) == 1 and "would serve version 1" in outcome.warnings[0]
    assert applier.cache_writes.behind(2) and applier.cache_writes.failures == 1
    cache_dir.unlink()
    assert applier.apply_bytes(_bytes(3), "json", "c").warnings == ()
    assert not applier.cache_writes.behind(3) and applier.cache_writes.version == 3


def test_the_snapshot_read_from_the_cache_is_what_the_cache_holds(tmp_path: Path) -> None:
    Applier(Store(), cache_dir=tmp_path).apply_bytes(_bytes(7), "json", "a")
    cached = cache.read(tmp_path)
    assert cached is not None
    restarted = Applier(Store(), cache_dir=tmp_path)
    restarted.apply_bytes(cached.payload, cached.encoding, cached.source, persist=False)
    assert restarted.cache_writes.version == 7 and not restarted.cache_writes.behind(7)
