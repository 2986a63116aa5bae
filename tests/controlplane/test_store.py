"""The flag store on a real SQLite file: versions, history, diffs, validation, concurrency."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any, TypedDict

import pytest
from fader.snapshot.loader import build_snapshot, check_document

from sidecar.controlplane.documents import InvalidFlags, check_flag, parse_document
from sidecar.controlplane.edits import UnknownFlag
from sidecar.controlplane.flagset import FlagSet
from sidecar.controlplane.store import FlagStore, StaleVersion, UnknownVersion
from sidecar.controlplane.storedb import SqliteDatabase
from tests.controlplane.flagd_docs import flagd_file, flagd_flag
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc


class Who(TypedDict):
    author: str
    reason: str


ME: Who = {"author": "alice", "reason": "test"}


def two_flags() -> dict[str, Any]:
    return snapshot_doc(
        flag("a", condition(partitions={"on": 0, "off": 100})),
        flag("b", condition(partitions={"on": 100})),
        version=41,
    )


@pytest.fixture
def store(tmp_path: Path) -> FlagStore:
    return FlagStore(SqliteDatabase(tmp_path / "data"))


def apply(store: FlagStore, document: Any, source: str = "flags.json", **kwargs: Any) -> Any:
    return store.apply([parse_document(document, source)], **ME, **kwargs)


def test_every_change_is_a_version_with_its_record(store: FlagStore) -> None:
    assert store.version == 0
    first = apply(store, two_flags())
    assert (first.version, first.changed) == (1, True)
    assert {(c.name, c.op) for c in first.changes} == {("a", "added"), ("b", "added")}
    dial = store.dial("a", 5, author="bob", reason="first users")
    kill = store.kill("b", author="guardrail", reason="error rate")
    assert (dial.version, kill.version) == (2, 3)
    history = store.history("a")
    assert [r.version for r in history] == [2, 1]
    assert history[0].author == "bob" and history[0].reason == "first users"
    assert history[0].action == "dial"
    fields = {f.path: (f.before, f.after) for f in history[0].changes[0].fields}
    assert fields["$.conditions[0].partitions[0].size"] == (0, 5)
    assert [r.action for r in store.history()] == ["kill", "dial", "apply"]
    assert store.history("b")[0].to_json("b")["changes"][0]["fields"][0]["path"] == "$.killed"


def test_the_snapshot_carries_the_version_and_each_flags_change_number(store: FlagStore) -> None:
    apply(store, two_flags())
    store.dial("a", 30, **ME)
    document = store.state.document()
    assert document["version"] == 2
    numbers = {f["name"]: f["changeNumber"] for f in document["flags"]}
    assert numbers == {"a": 2, "b": 1}
    snapshot = build_snapshot(document)
    assert snapshot.version == 2 and snapshot.flag_count == 2


def test_reapplying_the_same_flags_is_no_change(store: FlagStore) -> None:
    apply(store, two_flags())
    again = two_flags()
    again["version"] = 99
    for item in again["flags"]:
        item["changeNumber"] = 12345  # set by the store, not part of a definition
    written = apply(store, again)
    assert (written.version, written.changed, written.changes) == (1, False, ())
    assert len(store.history()) == 1


def test_invalid_flags_are_refused_with_fader_validates_paths_and_nothing_changes(
    store: FlagStore,
) -> None:
    apply(store, two_flags())
    before = store.state.document()
    bad = two_flags()
    bad["flags"][0]["algo"] = 9
    bad["flags"][1]["conditions"][0]["partitions"][0]["size"] = 7
    with pytest.raises(InvalidFlags) as refused:
        apply(store, bad, "bad.json")
    expected = [str(issue) for issue in check_document(bad).errors]
    assert [str(e.issue) for e in refused.value.errors] == expected
    assert {e.source for e in refused.value.errors} == {"bad.json"}
    assert [e.issue.path for e in refused.value.errors] == [
        "$.flags[0].algo",
        "$.flags[1].conditions[0].partitions",
    ]
    assert store.version == 1 and store.state.document() == before
    assert FlagStore(store.db).state.document() == before  # nothing reached the rows either


def test_paths_for_one_flag_a_list_and_splitchanges(store: FlagStore) -> None:
    single = flag("x", algo=7)
    with pytest.raises(InvalidFlags) as one:
        apply(store, single, "x.json")
    assert [e.issue.path for e in one.value.errors] == ["$.algo"]
    with pytest.raises(InvalidFlags) as listed:
        apply(store, [flag("ok"), flag("y", seed="s")], "list.json")
    assert [e.issue.path for e in listed.value.errors] == ["$[1].seed"]
    changes = {"ff": {"d": [flag("z", defaultTreatment="")], "t": 5}, "rbs": {"d": [], "t": 5}}
    with pytest.raises(InvalidFlags) as split:
        apply(store, changes, "changes.json")
    assert [str(e.issue) for e in split.value.errors] == [
        str(i) for i in check_document(changes).errors
    ]


def test_a_submission_may_depend_on_a_flag_already_in_the_store(store: FlagStore) -> None:
    apply(store, two_flags())
    dependent = flag(
        "c",
        condition(
            matcher(
                "IN_SPLIT_TREATMENT", dependencyMatcherData={"split": "a", "treatments": ["on"]}
            )
        ),
    )
    assert apply(store, dependent).version == 2
    with pytest.raises(InvalidFlags) as refused:
        store.delete("a", **ME)
    (error,) = refused.value.errors
    assert error.issue.flag == "c" and "depends on flag 'a'" in error.issue.message
    # At its path in the snapshot the delete would have published: b, c (a gone).
    assert error.issue.path.startswith("$.flags[1].conditions[0]")
    assert store.version == 2


def test_a_stale_base_version_is_refused_and_writes_nothing(store: FlagStore) -> None:
    apply(store, two_flags())
    store.dial("a", 10, base_version=1, **ME)
    with pytest.raises(StaleVersion) as stale:
        store.dial("a", 50, base_version=1, **ME)
    assert (stale.value.base, stale.value.current) == (1, 2)
    assert store.version == 2 and [r.version for r in store.history("a")] == [2, 1]


def test_two_writers_on_the_same_base_one_wins(store: FlagStore) -> None:
    apply(store, two_flags())
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def writer(percent: int) -> None:
        barrier.wait()
        try:
            store.dial("a", percent, base_version=1, **ME)
            outcomes.append("won")
        except StaleVersion:
            outcomes.append("409")

    threads = [threading.Thread(target=writer, args=(p,)) for p in (20, 40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["409", "won"]
    assert [r.action for r in store.history("a")] == ["dial", "apply"]


def test_rollback_restores_old_rules_as_a_new_version(store: FlagStore) -> None:
    apply(store, two_flags())
    store.dial("a", 5, **ME)
    five = copy.deepcopy(store.state.flags.flags["a"])
    store.dial("a", 50, **ME)
    store.kill("a", **ME)
    written = store.rollback("a", 2, author="alice", reason="")
    assert written.version == 5 and store.state.flags.flags["a"] == five
    assert store.history("a")[0].reason == "rollback to version 2"
    with pytest.raises(UnknownVersion):
        store.rollback("a", 99, **ME)
    apply(store, flag("late"))
    with pytest.raises(UnknownFlag, match="did not exist at version 2"):
        store.rollback("late", 2, **ME)


def test_unknown_flags(store: FlagStore) -> None:
    apply(store, two_flags())
    for change in (store.kill, store.revive, store.delete):
        with pytest.raises(UnknownFlag):
            change("nope", **ME)
    with pytest.raises(UnknownFlag):
        store.dial("nope", 5, **ME)


def test_replace_removes_what_the_document_does_not_name(store: FlagStore) -> None:
    apply(store, two_flags())
    written = apply(store, snapshot_doc(flag("b", killed=True)), replace=True)
    assert {(c.name, c.op) for c in written.changes} == {("a", "removed"), ("b", "changed")}
    assert sorted(store.state.flags.flags) == ["b"]


def test_a_reopened_store_has_the_same_set_and_change_numbers(tmp_path: Path) -> None:
    first = FlagStore(SqliteDatabase(tmp_path))
    first.apply([parse_document(two_flags())], **ME)
    first.dial("a", 25, **ME)
    first.delete("b", **ME)
    document = first.state.document()
    first.db.close()
    reopened = FlagStore(SqliteDatabase(tmp_path))
    assert reopened.version == 3 and reopened.state.document() == document
    assert json.loads(json.dumps(document))["flags"][0]["changeNumber"] == 2


def test_subscribers_see_every_version_in_order(store: FlagStore) -> None:
    seen: list[int] = []
    store.subscribe(lambda state: seen.append(state.version))
    apply(store, two_flags())
    store.dial("a", 1, **ME)
    store.dial("a", 1, **ME)  # no change: no version, no notification
    store.kill("a", **ME)
    assert seen == [1, 2, 3]


def test_an_edit_that_keeps_references_validates_the_flag_next_to_those_it_names() -> None:
    parent = flag("parent")
    child = flag(
        "child",
        condition(
            matcher(
                "IN_SPLIT_TREATMENT",
                dependencyMatcherData={"split": "parent", "treatments": ["on"]},
            )
        ),
    )
    flags = FlagSet({"parent": parent, "child": child, "zz": flag("zz")})
    assert check_flag(flags, "child") is flags  # the dependency resolves
    broken = FlagSet({**flags.flags, "zz": flag("zz", algo=5)})
    with pytest.raises(InvalidFlags) as refused:
        check_flag(broken, "zz")
    (error,) = refused.value.errors
    assert (error.issue.flag, error.issue.path) == ("zz", "$.flags[2].algo")


def test_flagd_flags_are_versioned_with_history_and_rollback(tmp_path: Path) -> None:
    store = FlagStore(SqliteDatabase(tmp_path / "data"))
    apply(store, flagd_file(), source="shop.flagd.json")
    apply(store, two_flags())  # Split flags next to them
    store.kill("new-ui", author="guardrail", reason="errors")
    store.revive("new-ui", **ME)
    changed = flagd_flag(targeting={"if": [{"$ref": "is-pro"}, "off", "on"]})
    edited = store.put_flag("new-ui", changed, **ME)
    assert edited.version == 5 and store.history("new-ui")[0].action == "edit"
    history = store.history("new-ui")
    assert [(r.version, r.action) for r in history] == [
        (5, "edit"), (4, "revive"), (3, "kill"), (1, "apply"),
    ]  # fmt: skip
    assert history[2].to_json("new-ui")["changes"] == [
        {
            "kind": "flagd",
            "name": "new-ui",
            "op": "changed",
            "fields": [{"path": "$.state", "before": "ENABLED", "after": "DISABLED"}],
        }
    ]
    assert store.history("color")[0].to_json("color")["changes"][0]["op"] == "added"
    back = store.rollback("new-ui", 3, **ME)
    assert back.version == 6 and back.notes == ("restored from version 3",)
    assert store.state.flags.flagd_flags["new-ui"]["state"] == "DISABLED"
    assert store.history("new-ui")[0].action == "rollback"
    document = store.state.document()
    assert document["flagd"]["metadata"] == {"flagSetId": "shop"}
    assert sorted(document["flagd"]["flags"]) == ["color", "new-ui"]
    assert check_document(document).errors == []
    # the rows alone give back the same set
    reopened = FlagStore(SqliteDatabase(tmp_path / "data"))
    assert reopened.state.document() == document


def test_an_invalid_flagd_flag_writes_nothing(store: FlagStore) -> None:
    apply(store, flagd_file())
    before = store.state.document()
    with pytest.raises(InvalidFlags) as caught:
        store.put_flag("new-ui", flagd_flag(default="maybe"), **ME)
    assert caught.value.errors[0].issue.path == "$.defaultVariant"
    with pytest.raises(InvalidFlags):
        apply(store, snapshot_doc(flag("color")))  # a Split flag by a flagd flag's name
    assert store.version == 1 and store.state.document() == before
