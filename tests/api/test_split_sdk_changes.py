"""The Split SDK API's change log: change numbers SDKs can follow, tombstones, segment
diffs, flag-set filters, and the fields SDKs need filled in."""

from __future__ import annotations

import json
from typing import Any

from fader.snapshot.loader import load_bytes
from fader.snapshot.snapshot import Snapshot

from sidecar.api.split_sdk_changes import (
    SPEC_1_1,
    SPEC_1_3,
    ChangeLog,
    Changes,
    next_changes,
    served_flag,
)
from sidecar.delivery.store import Store
from tests.fader.rules.builders import condition, flag, snapshot_doc

Json = dict[str, Any]


def snap(*flags: Json, version: int, **fields: Any) -> Snapshot:
    return load_bytes(
        json.dumps(snapshot_doc(*flags, version=version, **fields)).encode(), "json", "t"
    )


def page(changes: Changes, since: int, sets: frozenset[str] | None = None) -> Json:
    return dict(json.loads(changes.split_changes(SPEC_1_3, since, since, sets).body))


def names(section: Json) -> dict[str, str]:
    return {item["name"]: item["status"] for item in section["d"]}


def test_a_client_follows_versions_and_sees_a_removed_flag_once_as_archived() -> None:
    first = next_changes(None, snap(flag("a"), flag("b"), version=1), 1000)
    full = page(first, -1)
    assert names(full["ff"]) == {"a": "ACTIVE", "b": "ACTIVE"}
    assert (full["ff"]["s"], full["ff"]["t"]) == (-1, 1000)
    assert page(first, 1000)["ff"] == {"d": [], "s": 1000, "t": 1000}  # up to date: since == till

    second = next_changes(first, snap(flag("a"), flag("c"), version=2), 1001)
    delta = page(second, 1000)
    assert names(delta["ff"]) == {"b": "ARCHIVED", "c": "ACTIVE"}  # a did not change
    assert delta["ff"]["t"] == 1001
    assert names(page(second, -1)["ff"]) == {"a": "ACTIVE", "c": "ACTIVE"}  # no tombstones
    assert page(second, 1001)["ff"]["d"] == []


def test_a_number_never_handed_out_gets_everything_and_every_tombstone() -> None:
    first = next_changes(None, snap(flag("a"), flag("b"), version=1), 1000)
    second = next_changes(first, snap(flag("a"), version=2), 1001)
    for since in (5, 99_999):  # from before this process, and from the future
        answer = page(second, since)
        assert names(answer["ff"]) == {"a": "ACTIVE", "b": "ARCHIVED"}
        assert answer["ff"]["t"] == 1001


def test_a_changed_definition_or_change_number_is_sent_again() -> None:
    first = next_changes(None, snap(flag("a"), flag("b"), version=1), 1000)
    killed = next_changes(first, snap(flag("a", killed=True), flag("b"), version=2), 1001)
    assert names(page(killed, 1000)["ff"]) == {"a": "ACTIVE"}
    # without its own changeNumber a flag carries the snapshot's version, as the sidecar's
    # impressions do: a new version changes every such flag
    bare = {k: v for k, v in flag("a").items() if k != "changeNumber"}
    v3 = next_changes(killed, snap(bare, flag("b"), version=3), 1002)
    v4 = next_changes(v3, snap(bare, flag("b"), version=4), 1003)
    changed = page(v4, 1002)["ff"]["d"]
    assert [(item["name"], item["changeNumber"]) for item in changed] == [("a", 4)]


def test_flag_sets_filter_and_a_flag_leaving_the_sets_is_archived() -> None:
    first = next_changes(None, snap(flag("a", sets=["x"]), flag("b", sets=["y"]), version=1), 10)
    assert names(page(first, -1, frozenset({"x"}))["ff"]) == {"a": "ACTIVE"}
    moved = next_changes(first, snap(flag("a", sets=["y"]), flag("b", sets=["y"]), version=2), 11)
    assert names(page(moved, 10, frozenset({"x"}))["ff"]) == {"a": "ARCHIVED"}


def test_segments_report_added_and_removed_since_any_step() -> None:
    v1 = next_changes(None, snap(flag("a"), version=1, segments={"s": ["k1", "k2"]}), 100)
    v2 = next_changes(v1, snap(flag("a"), version=2, segments={"s": ["k2", "k3"]}), 101)
    v3 = next_changes(v2, snap(flag("a"), version=3, segments={"s": ["k3", "k4"]}), 102)

    def seg(changes: Changes, since: int) -> Json:
        return dict(json.loads(changes.segment_changes("s", since).body))

    full = seg(v3, -1)
    assert sorted(full["added"]) == ["k3", "k4"] and full["removed"] == [] and full["till"] == 102
    assert (sorted(seg(v3, 101)["added"]), sorted(seg(v3, 101)["removed"])) == (["k4"], ["k2"])
    assert (sorted(seg(v3, 100)["added"]), sorted(seg(v3, 100)["removed"])) == (
        ["k3", "k4"],
        ["k1", "k2"],
    )
    assert seg(v3, 102) == {"name": "s", "added": [], "removed": [], "since": 102, "till": 102}
    never = json.loads(v3.segment_changes("nobody-has-it", -1).body)
    assert never["added"] == [] and never["till"] == 100  # empty, as the engine reads it


def test_memberships_list_a_keys_segments() -> None:
    changes = next_changes(None, snap(flag("a"), version=1, segments={"s": ["k"], "t": []}), 7)
    assert json.loads(changes.memberships("k").body) == {
        "ms": {"cn": 7, "k": [{"n": "s"}]},
        "ls": {"cn": 7, "k": []},
    }
    assert json.loads(changes.my_segments("other").body) == {"mySegments": []}


def test_rule_based_segments_follow_their_own_since() -> None:
    rbs = {"name": "r", "conditions": [condition()]}
    v1 = next_changes(None, snap(flag("a"), version=1, rbs=[rbs]), 50)
    v2 = next_changes(v1, snap(flag("a"), version=2, rbs=[]), 51)
    answer = json.loads(v2.split_changes(SPEC_1_3, 51, 50, None).body)
    assert answer["ff"] == {"d": [], "s": 51, "t": 51}
    assert [(r["name"], r["status"]) for r in answer["rbs"]["d"]] == [("r", "ARCHIVED")]
    served = json.loads(v1.split_changes(SPEC_1_3, -1, -1, None).body)["rbs"]["d"][0]
    assert served["excluded"] == {"keys": [], "segments": []}
    assert served["trafficTypeName"] == "user" and served["changeNumber"] == 1


def test_spec_1_1_shape() -> None:
    changes = next_changes(None, snap(flag("a"), version=1), 9)
    answer = json.loads(changes.split_changes(SPEC_1_1, -1, -1, None).body)
    assert set(answer) == {"splits", "since", "till"} and answer["till"] == 9


def test_served_flags_fill_what_sdks_require_as_the_engine_reads_it() -> None:
    raw: Json = {
        "name": "m",
        "seed": 3,
        "defaultTreatment": "off",
        "conditions": [
            {
                "matcherGroup": {"combiner": "AND", "matchers": [{"matcherType": "ALL_KEYS"}]},
                "partitions": [{"treatment": "on", "size": 100}],
            }
        ],
    }
    served = served_flag(raw, 42)
    assert next(iter(served)) == "status"
    assert served["killed"] is False and served["trafficAllocation"] == 100
    assert served["trafficAllocationSeed"] == 0 and served["changeNumber"] == 42
    assert served["conditions"][0]["matcherGroup"]["matchers"][0]["negate"] is False
    assert "negate" not in raw["conditions"][0]["matcherGroup"]["matchers"][0]


def test_the_change_log_follows_the_store_with_numbers_that_only_grow() -> None:
    store = Store()
    ticks = iter([5_000, 4_000, 4_000])  # the clock may stand still or go back
    log = ChangeLog(store, clock=lambda: next(ticks))
    store.swap(snap(flag("a"), version=1))
    log.start()
    try:
        assert log.wait_for(1, 5)
        store.swap(snap(flag("b"), version=2))
        assert log.wait_for(2, 5)
        assert log.current is not None and log.current.cn == 5_001
        store.swap(snap(flag("a"), version=1), force=True)  # a rollback moves the version back
        assert log.wait_for(1, 5)
        assert log.current.cn == 5_002
        assert names(page(log.current, 5_001)["ff"]) == {"a": "ACTIVE", "b": "ARCHIVED"}
    finally:
        log.stop()
