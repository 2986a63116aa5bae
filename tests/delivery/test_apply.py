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
