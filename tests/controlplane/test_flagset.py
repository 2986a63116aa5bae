"""The flag set's flagd part: items by kind, the snapshot's flagd section, the diff."""

from __future__ import annotations

from fader.snapshot.loader import build_snapshot

from sidecar.controlplane.flagset import (
    CHANGED,
    EVALUATOR,
    FLAG,
    FLAGD,
    FLAGD_SET,
    FlagSet,
    describe,
    diff,
)
from tests.controlplane.flagd_docs import PRO_GETS_ON, flagd_flag
from tests.fader.rules.builders import flag


def mixed() -> FlagSet:
    return FlagSet(
        flags={"checkout": flag("checkout")},
        flagd_flags={"new-ui": flagd_flag(targeting=PRO_GETS_ON), "banner": flagd_flag("on")},
        evaluators={"is-pro": {"==": [{"var": "plan"}, "pro"]}},
        flagd_settings={"metadata": {"flagSetId": "shop"}, "fractional": "v3"},
    )


def test_the_snapshot_carries_a_flagd_section_the_sidecar_evaluates() -> None:
    document = mixed().document(7, {(FLAG, "checkout"): 3})
    assert document["flagd"] == {
        "flags": {"banner": flagd_flag("on"), "new-ui": flagd_flag(targeting=PRO_GETS_ON)},
        "$evaluators": {"is-pro": {"==": [{"var": "plan"}, "pro"]}},
        "metadata": {"flagSetId": "shop"},
        "fractional": "v3",
    }
    assert [f["changeNumber"] for f in document["flags"]] == [3]
    snapshot = build_snapshot(document)
    assert snapshot.version == 7 and set(snapshot.flag_names()) == {"checkout", "banner", "new-ui"}
    assert snapshot.evaluate("u1", "new-ui", None, {"plan": "pro"}).treatment == "on"
    assert snapshot.evaluate("u1", "new-ui", None, {"plan": "free"}).treatment == "off"
    assert snapshot.flagd is not None and snapshot.flagd.fractional.value == "v3"


def test_a_set_without_flagd_items_has_no_flagd_section() -> None:
    document = FlagSet(flags={"checkout": flag("checkout")}).document(1, {})
    assert "flagd" not in document


def test_a_name_has_one_dialect_and_both_are_listed() -> None:
    flags = mixed()
    assert flags.dialect("checkout") == FLAG and flags.dialect("new-ui") == FLAGD
    assert flags.dialect("is-pro") is None  # an evaluator is not a flag
    assert flags.flag_names() == ["banner", "checkout", "new-ui"]
    removed = flags.with_item(FLAGD, "banner", None)
    assert removed.dialect("banner") is None and "banner" in flags.flagd_flags  # a copy


def test_the_diff_names_each_flagd_item_and_the_field_that_changed() -> None:
    before = mixed()
    killed = dict(before.flagd_flags["new-ui"], state="DISABLED")
    after = before.with_changes(
        {
            (FLAGD, "new-ui"): killed,
            (EVALUATOR, "is-pro"): {"in": [{"var": "plan"}, ["pro", "team"]]},
            (FLAGD_SET, "fractional"): None,
        }
    )
    changes = diff(before, after)
    assert [(c.kind, c.name, c.op) for c in changes] == [
        (FLAGD, "new-ui", CHANGED),
        (EVALUATOR, "is-pro", CHANGED),
        (FLAGD_SET, "fractional", "removed"),
    ]
    assert describe(changes[0]) == ["~ flagd new-ui:", '    $.state: "ENABLED" -> "DISABLED"']
    assert "fractional" not in after.document(2, {})["flagd"]
