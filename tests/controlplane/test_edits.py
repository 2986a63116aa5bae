"""Edits of flagd-dialect flags: put, kill (flagd's way), revive, delete, restore; the
dimmer refuses them by name."""

from __future__ import annotations

import pytest
from fader.flagd import result as labels
from fader.snapshot.loader import build_snapshot

from sidecar.controlplane import edits
from sidecar.controlplane.documents import InvalidFlags, merge, parse_document
from sidecar.controlplane.flagset import FLAG, FLAGD, FlagSet
from tests.controlplane.flagd_docs import flagd_file, flagd_flag
from tests.fader.rules.builders import condition, flag, snapshot_doc


def mixed() -> FlagSet:
    split = snapshot_doc(flag("checkout", condition(partitions={"on": 0, "off": 100})))
    return merge(FlagSet(), [parse_document(split), parse_document(flagd_file())])


def answer(flags: FlagSet, name: str, plan: str = "pro") -> tuple[str, str | None]:
    decision = build_snapshot(flags.document(1, {})).evaluate("u1", name, None, {"plan": plan})
    return decision.treatment, decision.label


def test_kill_disables_a_flagd_flag_and_revive_enables_it() -> None:
    flags = mixed()
    assert answer(flags, "new-ui") == ("on", labels.LABEL_TARGETING_MATCH)
    killed = edits.set_killed("new-ui", True)(flags).flags
    assert killed.flagd_flags["new-ui"]["state"] == "DISABLED"
    assert answer(killed, "new-ui")[1] == labels.LABEL_DISABLED
    assert flags.flagd_flags["new-ui"]["state"] == "ENABLED"  # the old set is untouched
    revived = edits.set_killed("new-ui", False)(killed).flags
    assert revived.flagd_flags["new-ui"] == flags.flagd_flags["new-ui"]
    assert answer(revived, "new-ui") == ("on", labels.LABEL_TARGETING_MATCH)


def test_the_dimmer_refuses_a_flagd_flag_saying_why() -> None:
    with pytest.raises(edits.SplitOnly) as caught:
        edits.dial("new-ui", 5)(mixed())
    assert "'new-ui' is a flagd-dialect flag: the dimmer works on a Split flag" in str(caught.value)
    with pytest.raises(edits.UnknownFlag):
        edits.dial("nope", 5)(mixed())
    assert edits.dial("checkout", 5)(mixed()).flags.flags["checkout"]["conditions"][0][
        "partitions"
    ][0] == {"treatment": "on", "size": 5}


def test_put_creates_or_replaces_a_flagd_flag_named_by_its_address() -> None:
    flags = edits.put_flag("dark-mode", flagd_flag("on"))(mixed()).flags
    assert flags.dialect("dark-mode") == FLAGD and answer(flags, "dark-mode")[0] == "on"
    with pytest.raises(InvalidFlags) as caught:
        edits.put_flag("dark-mode", flagd_flag("maybe"))(flags)
    assert [str(e.issue) for e in caught.value.errors] == [
        "flag 'dark-mode' at $.defaultVariant: 'maybe' is not one of the variants"
    ]
    with pytest.raises(InvalidFlags) as clash:
        edits.put_flag("checkout", flagd_flag())(flags)
    assert "names are unique across both dialects" in str(clash.value)


def test_delete_and_restore_across_dialects() -> None:
    flags = mixed()
    gone = edits.delete("color")(flags).flags
    assert gone.dialect("color") is None
    with pytest.raises(edits.UnknownFlag):
        edits.delete("color")(gone)
    # the name is a Split flag now; restoring its flagd definition takes it back from Split
    split_color = edits.put_flag("color", flag("color"))(gone).flags
    restored = edits.restore("color", FLAGD, flags.flagd_flags["color"], 1)(split_color)
    assert restored.flags.dialect("color") == FLAGD and "color" not in restored.flags.flags
    assert restored.notes == ("restored from version 1",)
    back = edits.restore("color", FLAG, flag("color"), 2)(restored.flags).flags
    assert back.dialect("color") == FLAG and "color" not in back.flagd_flags
