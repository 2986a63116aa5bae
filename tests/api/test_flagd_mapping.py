"""sidecar.api.flagd_mapping: how a Fader answer reads in flagd's protocol, without gRPC."""

from __future__ import annotations

from typing import Any

import pytest
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot
from google.protobuf import struct_pb2

from sidecar.api import flagd_mapping as mapping
from sidecar.api.flagd_mapping import FlagdError
from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def result(treatment: str, config: str | None = None, label: str = "rule") -> Decision:
    return Decision(treatment, label, config, 1)


def test_context_targeting_key_and_typed_attributes() -> None:
    key, attrs = mapping.evaluation_context(
        struct(
            targetingKey="user-1",
            plan="pro",
            age=30,
            score=0.5,
            beta=True,
            groups=["a", "b"],
            gone=None,
        ),
        AttributePolicy(10),
    )
    assert key == "user-1"
    assert attrs == {"plan": "pro", "age": 30, "score": 0.5, "beta": True, "groups": ["a", "b"]}
    # Split's numeric matchers compare ints: a whole number must arrive as int, not float
    assert isinstance(attrs["age"], int)


def test_context_with_only_a_key_has_no_attributes() -> None:
    assert mapping.evaluation_context(struct(targetingKey="k"), AttributePolicy(10)) == ("k", None)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({}, "context.targetingKey: a string is required"),
        ({"targetingKey": None}, "context.targetingKey: a string is required"),
        ({"targetingKey": 7}, "context.targetingKey: a string is required"),
        ({"targetingKey": ""}, "context.targetingKey: must not be empty"),
        ({"targetingKey": "k" * 251}, "context.targetingKey: 251 characters"),
        ({"targetingKey": "k", "address": {"city": "x"}}, "struct_value is not an attribute"),
        ({"targetingKey": "k", "ids": [1, 2]}, "a list attribute must hold only strings"),
        ({"targetingKey": "k", "": "x"}, "an attribute name is empty"),
        ({"targetingKey": "k", "a": 1, "b": 2, "c": 3}, "context: 3 entries, at most 2 allowed"),
        ({"targetingKey": "k", "s": "x" * 9}, "context['s']: 9 characters, at most 8 allowed"),
        ({"targetingKey": "k", "l": ["xxxx", "yyyyy"]}, "context['l']: 9 characters, at most 8"),
    ],
)
def test_malformed_context_is_a_bad_request(context: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace("[", r"\[")):
        mapping.evaluation_context(struct(**context), AttributePolicy(2, max_size=8))


def test_boolean_treatments() -> None:
    assert mapping.boolean_value(result("on")) is True
    assert mapping.boolean_value(result("true")) is True
    assert mapping.boolean_value(result("off")) is False
    assert mapping.boolean_value(result("false")) is False
    for treatment in ("On", "yes", "control", "1"):
        with pytest.raises(FlagdError) as info:
            mapping.boolean_value(result(treatment))
        assert info.value.error_code == mapping.TYPE_MISMATCH


def test_object_is_the_config_parsed() -> None:
    assert mapping.object_value(result("on", '{"color": "green", "n": [1]}')) == {
        "color": "green",
        "n": [1],
    }
    for config in (None, "[1, 2]", "5"):
        with pytest.raises(FlagdError) as info:
            mapping.object_value(result("on", config))
        assert info.value.error_code == mapping.TYPE_MISMATCH, config
    with pytest.raises(FlagdError) as info:
        mapping.object_value(result("on", "{not json"))
    assert info.value.error_code == mapping.PARSE_ERROR


def test_numbers_come_from_the_config_then_the_treatment() -> None:
    assert mapping.int_value(result("x", '{"value": 42}')) == 42
    assert mapping.int_value(result("x", "7")) == 7
    assert mapping.int_value(result("25")) == 25
    assert mapping.int_value(result("-3", '{"color": "red"}')) == -3
    assert mapping.float_value(result("x", '{"value": 0.25}')) == 0.25
    assert mapping.float_value(result("1.5e2")) == 150.0
    assert mapping.float_value(result("10")) == 10.0
    assert mapping.int_value(result("x", '{"value": 4.0}')) == 4


@pytest.mark.parametrize(
    ("treatment", "config"),
    [
        ("on", None),
        ("2.5", None),  # not an integer
        ("x", '{"value": 2.5}'),
        ("1_000", None),
        ("inf", None),
        (" 7", None),
        ("x", '{"value": true}'),
        ("x", '{"value": "5"}'),
        ("99999999999999999999", None),  # beyond int64
    ],
)
def test_no_integer_is_a_type_mismatch(treatment: str, config: str | None) -> None:
    with pytest.raises(FlagdError) as info:
        mapping.int_value(result(treatment, config))
    assert info.value.error_code == mapping.TYPE_MISMATCH


def test_no_float_is_a_type_mismatch_and_bad_json_a_parse_error() -> None:
    with pytest.raises(FlagdError) as info:
        mapping.float_value(result("NaN"))
    assert info.value.error_code == mapping.TYPE_MISMATCH
    with pytest.raises(FlagdError) as info:
        mapping.float_value(result("1", "{oops"))
    assert info.value.error_code == mapping.PARSE_ERROR


def test_reasons() -> None:
    snap = build_snapshot(
        snapshot_doc(
            flag("static"),
            flag("killed", killed=True),
            flag(
                "targeted",
                condition(matcher("WHITELIST", whitelistMatcherData={"whitelist": ["vip"]})),
                condition(label="default rule"),
            ),
        )
    )
    static, killed, targeted = (snap.flags[n] for n in ("static", "killed", "targeted"))
    assert mapping.reason(static, snap.evaluate("k", "static")) == mapping.REASON_STATIC
    assert mapping.reason(killed, snap.evaluate("k", "killed")) == mapping.REASON_DISABLED
    assert mapping.reason(targeted, snap.evaluate("vip", "targeted")) == "TARGETING_MATCH"
    assert mapping.reason(targeted, snap.evaluate("k", "targeted")) == mapping.REASON_DEFAULT
    for label in ("not in split", "prerequisites not met"):
        assert mapping.reason(targeted, result("off", label=label)) == mapping.REASON_DEFAULT
    with pytest.raises(FlagdError) as info:
        mapping.reason(None, snap.evaluate("k", "missing"))
    assert info.value.error_code == mapping.FLAG_NOT_FOUND
    with pytest.raises(FlagdError) as info:
        mapping.reason(targeted, result("control", label="exception"))
    assert info.value.error_code == mapping.GENERAL


def test_metadata_carries_label_and_version() -> None:
    assert mapping.metadata(result("on", label="killed"), 42) == {"label": "killed", "version": 42}


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("flagSetId=checkout", "checkout"), ("checkout", "checkout"), (" a ", "a")],
)
def test_selector_names_a_flag_set(header: str | None, expected: str | None) -> None:
    assert mapping.flag_set(header) == expected


@pytest.mark.parametrize("header", ["source=file:flags.json", "flagSetId=", "", "x=y"])
def test_unsupported_selector_is_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest, match="Flagd-Selector"):
        mapping.flag_set(header)


def test_change_notifications_by_kind_and_flag_set() -> None:
    before = build_snapshot(
        snapshot_doc(flag("kept", sets=["a"]), flag("removed", sets=["a"]), flag("other"))
    )
    after = build_snapshot(
        snapshot_doc(
            flag("kept", sets=["a"], defaultTreatment="on"),
            flag("added", sets=["a"]),
            flag("other", defaultTreatment="x"),
        ),
    )
    changed = list(after.changed_flags(before))
    assert mapping.change_notifications(before.flags, after.flags, changed, None) == {
        "added": {"type": "write"},
        "kept": {"type": "update"},
        "removed": {"type": "delete"},
        "other": {"type": "update"},
    }
    assert set(mapping.change_notifications(before.flags, after.flags, changed, "a")) == {
        "added",
        "kept",
        "removed",
    }
    assert mapping.change_notifications(before.flags, after.flags, changed, "none") == {}
