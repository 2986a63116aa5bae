"""The dimmer with the real engine: 10,000 keys bucketed by fader's own snapshot evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from fader.snapshot.loader import build_snapshot

from sidecar.controlplane import dimmer
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc

KEYS = [f"user-{i}" for i in range(10_000)]


def treated(definition: dict[str, Any], treatment: str = "on") -> set[str]:
    """The keys the real engine gives ``treatment`` under ``definition``."""
    snapshot = build_snapshot(snapshot_doc(definition))
    name = definition["name"]
    return {key for key in KEYS if snapshot.evaluate(key, name).treatment == treatment}


def released(percent: int = 0) -> dict[str, Any]:
    return flag(
        "f", condition(partitions={"on": percent, "off": 100 - percent}, label="default rule")
    )


def test_rising_dial_only_adds_keys_and_falling_removes_the_newest_first() -> None:
    definition = released(0)
    seen: list[set[str]] = [treated(definition)]
    assert seen[0] == set()
    for percent in (5, 25, 50, 100):
        definition = dimmer.dial(definition, percent).flag
        keys = treated(definition)
        assert abs(len(keys) / len(KEYS) * 100 - percent) <= 1.5, (percent, len(keys))
        assert seen[-1] <= keys, f"a key left the treatment when the dial rose to {percent}"
        seen.append(keys)
    at_ten = treated(dimmer.dial(definition, 10).flag)
    assert seen[1] <= at_ten <= seen[2], "down to 10 %: the keys added last (above 10) left"
    # Path-independent: 10 % reached from 100 is the same keys as 10 % reached from 0.
    assert at_ten == treated(dimmer.dial(released(0), 10).flag)
    assert abs(len(at_ten) / len(KEYS) * 100 - 10) <= 1.5


def test_dial_keeps_seeds_other_rules_and_puts_the_treatment_first() -> None:
    vip = condition(
        matcher("WHITELIST", whitelistMatcherData={"whitelist": ["vip"]}),
        partitions={"on": 100},
        kind="WHITELIST",
    )
    definition = flag("f", vip, condition(partitions={"off": 70, "on": 30}))
    dialed = dimmer.dial(definition, 40)
    assert dialed.treatment == "on" and dialed.rebucketed  # 'on' was second: re-bucketed once
    assert dialed.flag["seed"] == definition["seed"]
    assert dialed.flag["trafficAllocationSeed"] == definition["trafficAllocationSeed"]
    assert dialed.flag["conditions"][0] == vip
    assert dialed.flag["conditions"][1]["partitions"] == [
        {"treatment": "on", "size": 40},
        {"treatment": "off", "size": 60},
    ]
    assert definition["conditions"][1]["partitions"][0]["treatment"] == "off"  # not mutated
    assert not dimmer.dial(dialed.flag, 60).rebucketed


def test_the_other_treatments_share_the_rest_in_proportion() -> None:
    definition = flag("f", condition(partitions={"on": 10, "blue": 60, "green": 30}))
    dialed = dimmer.dial(definition, 50).flag
    sizes = {p["treatment"]: p["size"] for p in dialed["conditions"][0]["partitions"]}
    assert sizes == {"on": 50, "blue": 33, "green": 17}
    assert sum(sizes.values()) == 100
    back = dimmer.dial(dialed, 0, "on").flag
    assert sum(p["size"] for p in back["conditions"][0]["partitions"]) == 100


def test_a_named_treatment_and_a_rule_with_only_one() -> None:
    definition = flag("f", condition(partitions={"on": 100}), defaultTreatment="off")
    dialed = dimmer.dial(definition, 20).flag
    assert dialed["conditions"][0]["partitions"] == [
        {"treatment": "on", "size": 20},
        {"treatment": "off", "size": 80},
    ]
    blue = dimmer.dial(dialed, 10, "blue").flag
    partitions = blue["conditions"][0]["partitions"]
    assert partitions[0] == {"treatment": "blue", "size": 10}
    assert {p["treatment"] for p in partitions} == {"blue", "on", "off"}
    assert build_snapshot(snapshot_doc(blue)).flag_count == 1  # still a valid flag


@pytest.mark.parametrize(
    ("definition", "percent", "message"),
    [
        (released(0), 101, "0..100"),
        (released(0), -1, "0..100"),
        (flag("f", condition(kind="WHITELIST")), 10, "no ROLLOUT condition"),
        (flag("f", condition(partitions={"off": 100})), 10, "name one to dial"),
    ],
)
def test_what_cannot_be_dialled(definition: dict[str, Any], percent: int, message: str) -> None:
    with pytest.raises(dimmer.DialError, match=message):
        dimmer.dial(definition, percent)


def test_current_dial_reads_the_default_rule() -> None:
    assert dimmer.current_dial(released(25)) == dimmer.Dial("on", 25)
    assert dimmer.current_dial(flag("f", condition(kind="WHITELIST"))) is None
