"""A snapshot keeps the document it was built from (`Snapshot.document`), so lanes that
re-serve definitions (the Split SDK API) can read them back after compilation dropped them."""

from __future__ import annotations

import copy
import json
from typing import Any

from fader.snapshot.loader import build_snapshot, load_bytes

DOC: dict[str, Any] = {
    "version": 7,
    "flags": [
        {
            "name": "f",
            "seed": 1,
            "defaultTreatment": "off",
            "changeNumber": 5,
            "conditions": [],
            "configurations": {"off": '{"a":1}'},
        }
    ],
    "segments": {"beta": ["u1", "u2"]},
}


def test_loaded_bytes_decode_to_the_same_definitions() -> None:
    snap = load_bytes(json.dumps(DOC).encode(), "json", "test")
    assert snap.document is not None
    doc = snap.document.decode()
    assert doc.version == 7
    assert doc.flags == DOC["flags"]  # compile consumed its own copy, not these
    assert doc.segments == {"beta": ["u1", "u2"]}


def test_a_built_snapshot_does_not_follow_later_changes_to_the_callers_document() -> None:
    mine = copy.deepcopy(DOC)
    snap = build_snapshot(mine)
    mine["flags"][0]["defaultTreatment"] = "on"
    assert snap.document is not None
    assert snap.document.decode().flags[0]["defaultTreatment"] == "off"
