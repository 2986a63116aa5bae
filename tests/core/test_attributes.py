"""The attribute policy every lane calls: count, size, types, and a counted refusal."""

from __future__ import annotations

import pytest

from sidecar import limits
from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest

POLICY = AttributePolicy(max_attributes=3, max_size=5)


def test_admits_the_engine_types_and_keeps_int_apart_from_float() -> None:
    admitted = POLICY.admit({"i": 2**63 - 1, "f": 2.0, "b": True}, "attributes")
    assert admitted == {"i": 2**63 - 1, "f": 2.0, "b": True}
    assert type(admitted["f"]) is float and type(admitted["i"]) is int
    assert POLICY.admit({"s": "abcde", "l": ["ab", "cde"]}, "attributes") == {
        "s": "abcde",
        "l": ["ab", "cde"],
    }
    assert POLICY.admit({}, "attributes") is None


@pytest.mark.parametrize(
    ("values", "limit", "message"),
    [
        ({"a": 1, "b": 2, "c": 3, "d": 4}, limits.ATTRIBUTES, "x: 4 entries, at most 3 allowed"),
        ({"s": "abcdef"}, limits.ATTRIBUTE_SIZE, "x['s']: 6 characters, at most 5 allowed"),
        ({"l": ["abc", "def"]}, limits.ATTRIBUTE_SIZE, "x['l']: 6 characters, at most 5 allowed"),
    ],
)
def test_limits_are_refused_and_counted(
    values: dict[str, object], limit: str, message: str
) -> None:
    before = limits.REFUSALS.get(limit)
    with pytest.raises(BadRequest) as caught:
        POLICY.admit(values, "x")
    assert str(caught.value) == message
    assert limits.REFUSALS.get(limit) == before + 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"o": {"a": 1}}, "x['o']: dict is not one of string, integer, float, boolean"),
        ({"m": ["a", 1]}, "x['m']: list is not one of"),
        ({"n": None}, "x['n']: NoneType is not one of"),
        ({"big": 2**63}, "x['big']: 9223372036854775808 does not fit in 64 bits"),
        ({"": 1}, "x: an attribute name is empty"),
    ],
)
def test_wrong_types_are_refused_with_the_field(values: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=f"^{message.replace('[', '.').replace(']', '.')}"):
        POLICY.admit(values, "x")


def test_a_lane_converts_its_own_extra_type() -> None:
    class Stamp:
        seconds = 1_700_000_000

    def seconds(value: object) -> object | None:
        return value.seconds if isinstance(value, Stamp) else None

    assert POLICY.admit({"t": Stamp()}, "x", seconds) == {"t": 1_700_000_000}
    with pytest.raises(BadRequest, match="Stamp is not one of"):
        POLICY.admit({"t": Stamp()}, "x")
