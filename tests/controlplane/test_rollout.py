"""Rollout plans on a real SQLite store, driven tick by tick with a clock the test moves."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pytest

from sidecar.controlplane.dimmer import current_dial
from sidecar.controlplane.documents import parse_document
from sidecar.controlplane.edits import SplitOnly
from sidecar.controlplane.rollout import (
    ABORTED,
    COMPLETED,
    KILLED,
    PAUSED,
    RUNNING,
    GateDecision,
    Plan,
    PlanError,
    RolloutEngine,
    parse_steps,
)
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.storedb import SqliteDatabase
from tests.controlplane.flagd_docs import flagd_flag
from tests.fader.rules.builders import condition, flag, snapshot_doc


class Who(TypedDict):
    author: str
    reason: str


ME: Who = {"author": "alice", "reason": "ramp"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> FlagStore:
    store = FlagStore(SqliteDatabase(tmp_path))
    document = snapshot_doc(flag("f", condition(partitions={"on": 0, "off": 100})))
    store.apply([parse_document(document)], **ME)
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


def percent(store: FlagStore) -> int:
    dial = current_dial(store.state.flags.flags["f"])
    assert dial is not None and dial.treatment == "on"
    return dial.percent


def test_a_plan_steps_after_each_hold_and_records_each_step(store: FlagStore, clock: Clock) -> None:
    engine = RolloutEngine(store, clock=clock)
    plan, written = engine.start("f", (1, 5, 25, 50, 100), 10.0, **ME)
    assert plan.status == RUNNING and percent(store) == 1 and written.version == 2
    engine.tick()
    assert percent(store) == 1  # the hold has not passed
    seen = []
    for _ in range(4):
        clock.now += 10.0
        engine.tick()
        seen.append(percent(store))
    assert seen == [5, 25, 50, 100]
    assert engine.plan("f").status == COMPLETED
    reasons = [r.reason for r in store.history("f")][:5]
    assert reasons == [f"rollout step {k}/5" for k in (5, 4, 3, 2)] + ["rollout step 1/5: ramp"]
    clock.now += 100
    engine.tick()
    assert store.version == 6  # nothing after the last step


def test_the_gate_holds_a_step_until_it_allows(store: FlagStore, clock: Clock) -> None:
    verdict = GateDecision(False, "error rate 3.1 % > 2 %")
    asked: list[str] = []

    def gate(plan: Plan) -> GateDecision:
        asked.append(plan.step_label)
        return verdict

    engine = RolloutEngine(store, gate=gate, clock=clock)
    engine.start("f", (1, 50), 5.0, **ME)
    clock.now += 6
    engine.tick()
    assert percent(store) == 1 and asked == ["1/2"]
    assert engine.view(engine.plan("f"))["gate"] == "error rate 3.1 % > 2 %"
    verdict = GateDecision(True)
    engine.tick()
    assert percent(store) == 50 and engine.view(engine.plan("f"))["gate"] == ""


def test_pause_resume_and_abort(store: FlagStore, clock: Clock) -> None:
    engine = RolloutEngine(store, clock=clock)
    engine.start("f", (10, 20, 30), 5.0, **ME)
    engine.pause("f", author="bob", reason="looking at logs")
    clock.now += 60
    engine.tick()
    assert percent(store) == 10 and engine.plan("f").status == PAUSED
    with pytest.raises(PlanError):
        engine.pause("f", **ME)
    engine.resume("f", **ME)
    engine.tick()
    assert percent(store) == 10  # resume restarts the hold
    clock.now += 5
    engine.tick()
    assert percent(store) == 20
    plan, written = engine.abort("f", author="bob", reason="bad metrics")
    assert plan.status == ABORTED and percent(store) == 0 and written.changed
    assert store.history("f")[0].reason == "rollout aborted: bad metrics"
    assert [e["action"] for e in engine.plan("f").events] == [
        "start", "pause", "resume", "step", "abort",
    ]  # fmt: skip
    with pytest.raises(PlanError):
        engine.abort("f", **ME)


def test_a_killed_flag_pauses_its_plan_and_kill_through_the_engine_ends_it(
    store: FlagStore, clock: Clock
) -> None:
    engine = RolloutEngine(store, clock=clock)
    engine.start("f", (10, 20), 1.0, **ME)
    store.kill("f", author="guardrail", reason="latency")
    clock.now += 2
    engine.tick()
    plan = engine.plan("f")
    assert plan.status == PAUSED and plan.note == "the flag is killed" and percent(store) == 10
    with pytest.raises(PlanError, match="revive"):
        engine.resume("f", **ME)
    store.revive("f", **ME)
    engine.resume("f", **ME)
    killed = engine.kill("f", author="guardrail", reason="errors")
    assert killed.changed and engine.plan("f").status == KILLED
    assert store.state.flags.flags["f"]["killed"] is True


def test_a_new_engine_resumes_the_stored_plan_at_its_step(tmp_path: Path, clock: Clock) -> None:
    first = FlagStore(SqliteDatabase(tmp_path))
    first.apply([parse_document(flag("f", condition(partitions={"on": 0, "off": 100})))], **ME)
    RolloutEngine(first, clock=clock).start("f", (1, 5, 25), 10.0, **ME)
    clock.now += 10
    RolloutEngine(first, clock=clock).tick()
    first.db.close()
    reopened = FlagStore(SqliteDatabase(tmp_path))
    engine = RolloutEngine(reopened, clock=clock)
    assert engine.plan("f").step_label == "2/3" and percent(reopened) == 5
    engine.tick()
    assert percent(reopened) == 5
    clock.now += 10
    engine.tick()
    assert percent(reopened) == 25 and engine.plan("f").status == COMPLETED


def test_two_engines_on_one_store_take_each_step_once(store: FlagStore, clock: Clock) -> None:
    a, b = RolloutEngine(store, clock=clock), RolloutEngine(store, clock=clock)
    a.start("f", (1, 2, 3), 1.0, **ME)
    stale = b.plans()["f"]
    clock.now += 1
    assert a.advance(a.plans()["f"])
    assert not b.advance(stale)  # b acts on the plan as it read it before a took the step
    assert percent(store) == 2
    assert [r.reason for r in store.history("f")].count("rollout step 2/3") == 1


def test_plans_refuse_what_makes_no_sense(store: FlagStore, clock: Clock) -> None:
    engine = RolloutEngine(store, clock=clock)
    with pytest.raises(ValueError, match="rise"):
        engine.start("f", (5, 5), 1.0, **ME)
    engine.start("f", (5, 10), 1.0, **ME)
    with pytest.raises(PlanError, match="already"):
        engine.start("f", (5, 10), 1.0, **ME)
    for bad in ("", "5,x", "50,10", "5,101"):
        with pytest.raises(ValueError):
            parse_steps(bad)
    assert parse_steps("1,5,25,50,100") == (1, 5, 25, 50, 100)


def test_a_plan_refuses_a_flagd_flag_and_ends_when_its_flag_becomes_one(
    store: FlagStore, clock: Clock
) -> None:
    engine = RolloutEngine(store, clock=clock)
    engine.start("f", (10, 50), 5.0, **ME)
    flagd = {"flags": {"f": flagd_flag(), "g": flagd_flag()}}
    store.apply([parse_document(flagd)], replace=True, **ME)  # "f" is a flagd flag now
    with pytest.raises(SplitOnly, match="'g' is a flagd-dialect flag: a rollout plan works on"):
        engine.start("g", (10, 50), 5.0, **ME)
    clock.now += 6
    engine.tick()
    plan = engine.plan("f")
    assert plan.status == ABORTED and plan.note == "the flag is a flagd flag now"
    assert store.state.flags.flagd_flags["f"] == flagd_flag()  # the tick changed nothing
