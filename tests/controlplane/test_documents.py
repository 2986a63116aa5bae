"""Submitted flagd documents: taken apart into items, merged, refused with the sidecar's own
errors at the submitter's paths."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fader.snapshot.loader import check_document

from sidecar.controlplane.documents import InvalidFlags, Part, merge, parse_document
from sidecar.controlplane.flagset import FlagSet
from tests.controlplane.flagd_docs import flagd_file, flagd_flag
from tests.fader.rules.builders import flag, snapshot_doc


def refused(base: FlagSet, *parts: Part, replace: bool = False) -> InvalidFlags:
    with pytest.raises(InvalidFlags) as caught:
        merge(base, parts, replace=replace)
    return caught.value


def texts(errors: list[Any]) -> list[str]:
    return sorted(f"{e.source}: {e.issue}" for e in errors)


def test_a_flagd_file_and_a_flagd_section_become_items() -> None:
    plain = parse_document(flagd_file(), "flags.flagd.json")
    assert sorted(plain.flagd_flags) == ["color", "new-ui"] and plain.flagd_path == "$"
    assert plain.evaluators == {"is-pro": {"==": [{"var": "plan"}, "pro"]}}
    assert plain.flagd_settings == {"metadata": {"flagSetId": "shop"}}  # $schema is not kept
    section = parse_document({**snapshot_doc(flag("checkout")), "flagd": flagd_file()})
    assert section.flagd_path == "$.flagd" and [f["name"] for f in section.flags] == ["checkout"]
    daemon = {"flags": [{"key": "a", **flagd_flag()}], "fractional": "v3"}  # in a section only
    array = parse_document({**snapshot_doc(), "flagd": daemon})
    assert array.flagd_flags == {"a": flagd_flag()} and array.flagd_settings == {"fractional": "v3"}


def test_merging_keeps_the_stores_items_and_replacing_drops_them() -> None:
    base = merge(FlagSet(), [parse_document(snapshot_doc(flag("checkout")))])
    both = merge(base, [parse_document(flagd_file())])
    assert sorted(both.flags) == ["checkout"] and sorted(both.flagd_flags) == ["color", "new-ui"]
    assert both.flagd_settings == {"metadata": {"flagSetId": "shop"}}
    only = merge(both, [parse_document({"flags": {"x": flagd_flag()}})], replace=True)
    assert (dict(only.flags), sorted(only.flagd_flags), dict(only.evaluators)) == ({}, ["x"], {})


def test_errors_are_the_sidecars_own_at_the_submitters_paths() -> None:
    bad = flagd_file(
        broken=flagd_flag(default="nope"),
        deep=flagd_flag(targeting=_nested(40)),
        mixed={"state": "ON", "variants": {"a": 1, "b": "x"}},
    )
    error = refused(FlagSet(), parse_document(bad, "bad.json"))
    expected = check_document(bad).errors
    assert len(expected) >= 4
    assert texts(error.errors) == sorted(f"bad.json: {i}" for i in expected)
    assert {e.issue.path for e in error.errors} >= {
        '$.flags["broken"].defaultVariant',
        '$.flags["mixed"].state',
    }
    inside = {**snapshot_doc(), "flagd": bad}  # the same flags in a snapshot's flagd section
    error = refused(FlagSet(), parse_document(inside, "snap.json"))
    assert texts(error.errors) == sorted(f"snap.json: {i}" for i in check_document(inside).errors)
    assert '$.flagd.flags["broken"].defaultVariant' in {e.issue.path for e in error.errors}


def test_a_shape_that_cannot_be_taken_apart_is_refused_as_the_sidecar_refuses_it() -> None:
    shapes: list[dict[str, Any]] = [
        {"flags": {}, "$evaluators": []},
        {**snapshot_doc(), "flagd": {"flags": 3}},
    ]
    for document in shapes:
        with pytest.raises(InvalidFlags) as caught:
            parse_document(document, "f.json")
        assert texts(caught.value.errors) == sorted(
            f"f.json: {i}" for i in check_document(document).errors
        )


def test_a_name_is_one_dialects_only() -> None:
    base = merge(FlagSet(), [parse_document(snapshot_doc(flag("new-ui")))])
    error = refused(base, parse_document(flagd_file(), "ui.flagd.json"))
    assert [str(e.issue) for e in error.errors] == [
        "flag 'new-ui' at $.flags[\"new-ui\"]: a Split flag has the same name"
        " (names are unique across both dialects)"
    ]
    assert error.errors[0].source == "ui.flagd.json"
    both = {**snapshot_doc(flag("new-ui")), "flagd": flagd_file()}
    assert {str(i) for i in check_document(both).errors} == {
        str(e.issue) for e in refused(FlagSet(), parse_document(both)).errors
    }


def test_a_flagd_item_submitted_twice_names_both_places() -> None:
    error = refused(
        FlagSet(), parse_document(flagd_file(), "a.json"), parse_document(flagd_file(), "b.json")
    )
    assert {(e.source, e.issue.path) for e in error.errors} >= {
        ("b.json", '$.flags["new-ui"]'),
        ("b.json", "$.$evaluators.is-pro"),
        ("b.json", "$.metadata"),
    }
    assert 'also defined in a.json at $.flags["new-ui"]' in str(error)


def test_an_item_the_store_holds_is_reported_at_its_published_path() -> None:
    uses_deep = flagd_flag(targeting={"if": [{"$ref": "deep"}, "on", "off"]})
    stored = {"flags": {"a": uses_deep}, "$evaluators": {"deep": _nested(20)}}
    base = merge(FlagSet(), [parse_document(stored)])
    # a submitted evaluator makes the stored flag that uses it too deep
    error = refused(
        base, parse_document({"flags": {}, "$evaluators": {"deep": _nested(40)}}, "ev.json")
    )
    assert [(e.source, e.issue.flag) for e in error.errors] == [("ev.json", "a")]
    assert error.errors[0].issue.path.startswith("$evaluators.deep.")
    # a submitted flag that nests the stored evaluator too deep: the evaluator is the store's
    wrapped = flagd_flag(targeting={"if": [_nested(20, {"$ref": "deep"}), "on", "off"]})
    error = refused(base, parse_document({"flags": {"b": wrapped}}, "b.json"))
    assert [(e.source, e.issue.flag) for e in error.errors] == [("snapshot", "b")]


def _nested(depth: int, inner: dict[str, Any] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = inner or {"var": "plan"}
    for _ in range(depth):
        rule = {"!": [copy.deepcopy(rule)]}
    return rule


def test_null_items_are_refused_or_dropped_as_the_sidecar_reads_them() -> None:
    with pytest.raises(InvalidFlags) as caught:
        parse_document({"flags": {}, "$evaluators": {"x": None}}, "n.json")
    assert [str(e.issue) for e in caught.value.errors] == [
        "$.$evaluators.x: an evaluator must be a rule, not null (the control plane cannot keep it)"
    ]
    bad_generation = {"flags": {"a": flagd_flag()}, "fractional": None}
    error = refused(FlagSet(), parse_document(bad_generation, "g.json"))
    assert texts(error.errors) == sorted(
        f"g.json: {i}" for i in check_document(bad_generation).errors
    )
    no_metadata = merge(
        FlagSet(), [parse_document({"flags": {"a": flagd_flag()}, "metadata": None})]
    )
    assert dict(no_metadata.flagd_settings) == {}
