"""The guardrail loop's decisions, on a real SQLite flag store and a real DuckDB exposure store
filled with synthetic exposures and events; alerts go to a real local HTTP server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.controlplane.decisions import Decision, Kind
from sidecar.controlplane.rollout import COMPLETED, KILLED, PAUSED, RUNNING
from tests.controlplane.guardrail_world import Webhooks, World, world_fixture
from tests.waiting import wait_for


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    server = Webhooks().start()
    yield server
    server.stop()


@pytest.fixture
def world(tmp_path: Path, hooks: Webhooks) -> Iterator[World]:
    yield from world_fixture(tmp_path, webhooks=[hooks.url])


def kinds(world: World, flag: str) -> list[str]:
    return [d.kind.value for d in world.decisions.for_flag(flag)]


def judged(made: list[Decision]) -> list[Kind]:
    """The decisions of the look itself (without the plan's steps read back)."""
    return [d.kind for d in made if d.kind is not Kind.ADVANCE]


def message_of(made: list[Decision], kind: Kind) -> str:
    return next(d.message for d in made if d.kind is kind)


def start_plan(world: World, flag: str, steps: tuple[int, ...] = (50, 100)) -> None:
    world.add_flag(flag)
    world.errors_metric()
    world.definitions.set_guardrail(flag, "errors", 0.01)
    world.rollouts.start(flag, steps, 0, "on", author="test")


def test_a_breach_kills_the_flag_stops_its_plan_and_alerts(world: World, hooks: Webhooks) -> None:
    start_plan(world, "checkout")
    world.expose("checkout", 3000, {"on": 0.20, "off": 0.05})

    made = world.guardian.look()

    assert judged(made) == [Kind.BREACH, Kind.KILL]
    flag = world.store.state.flags.flags["checkout"]
    assert flag["killed"] is True
    record = world.store.history("checkout", limit=1)[0]
    assert record.author == "guardrail"
    assert record.reason.startswith("guardrail errors: +")
    assert "pts, CS [" in record.reason
    assert world.rollouts.plan("checkout").status == KILLED
    assert kinds(world, "checkout") == ["advance", "breach", "kill"]
    breach = world.decisions.for_flag("checkout")[1]
    (compared,) = breach.details["metrics"][0]["comparisons"]
    assert compared["treatment"] == "on" and compared["ci"][0] > 0.01
    bodies = hooks.wait_for(3)
    texts = " | ".join(b["text"] for b in bodies)
    assert {b["kind"] for b in bodies} == {"advance", "breach", "kill"}
    assert "kill on checkout" in texts and "guardrail errors" in texts
    assert world.decisions.counts["kill"] == 1
    # A killed flag is not judged again: the next look decides nothing.
    assert world.guardian.look() == []
    # the hook's server has the third body before the sender has its answer and counts it
    wait_for(lambda: world.alerts.sent == 3, timeout=10, what="the three alerts counted")
    assert world.alerts.failed == 0


def test_a_sample_ratio_mismatch_pauses_the_plan(world: World, hooks: Webhooks) -> None:
    start_plan(world, "search")
    world.expose("search", 2000, {"on": 0.05, "off": 0.05}, weights={"on": 70, "off": 30})

    made = world.guardian.look()

    assert judged(made) == [Kind.SRM_PAUSE]
    assert "sample ratio mismatch" in message_of(made, Kind.SRM_PAUSE)
    assert world.rollouts.plan("search").status == PAUSED
    assert world.store.state.flags.flags["search"]["killed"] is False
    world.rollouts.tick()
    assert world.rollouts.plan("search").index == 0
    assert "srm_pause" in {b["kind"] for b in hooks.wait_for(2)}


def test_exposures_of_an_earlier_dial_do_not_count_for_the_sample_ratio(world: World) -> None:
    start_plan(world, "ramp", steps=(10, 50, 100))
    world.expose("ramp", 3000, {"on": 0.05, "off": 0.05}, seed=1)  # 10/90, as dialled
    world.store.dial("ramp", 50, "on", author="test", reason="by hand")

    # Nothing at the new change number yet: 10/90 exposures against a 50/50 split are old.
    assert Kind.SRM_PAUSE not in [d.kind for d in world.guardian.look()]
    world.expose("ramp", 2000, {"on": 0.05, "off": 0.05}, seed=2)
    assert Kind.SRM_PAUSE not in [d.kind for d in world.guardian.look()]
    assert world.decisions.look("ramp").outcome == "healthy"  # type: ignore[union-attr]
    # Keys served 10/90 under the 50/50 definition are a mismatch: the check does count.
    world.expose("ramp", 2000, {"on": 0.05, "off": 0.05}, seed=3, weights={"on": 10, "off": 90})
    assert Kind.SRM_PAUSE in [d.kind for d in world.guardian.look()]


def test_too_little_data_holds_the_plan_at_its_step(world: World, hooks: Webhooks) -> None:
    start_plan(world, "banner")
    world.expose("banner", 100, {"on": 0.05, "off": 0.05})

    made = world.guardian.look()

    assert judged(made) == [Kind.HOLD]
    assert "of 355 units" in message_of(made, Kind.HOLD)
    world.rollouts.tick()
    plan = world.rollouts.plan("banner")
    assert plan.index == 0 and plan.status == RUNNING
    assert "hold" in world.rollouts.waiting["banner"]
    # Held again at the next look: recorded once per step, not at every look.
    assert world.guardian.look() == []
    assert kinds(world, "banner") == ["advance", "hold"]


def test_no_data_at_all_holds_too(world: World) -> None:
    start_plan(world, "empty")
    assert judged(world.guardian.look()) == [Kind.HOLD]
    world.rollouts.tick()
    assert world.rollouts.plan("empty").index == 0


def test_a_healthy_plan_advances_then_completes(world: World, hooks: Webhooks) -> None:
    start_plan(world, "profile", steps=(50, 100))
    world.rollouts.tick()
    assert world.rollouts.plan("profile").index == 0  # no look yet at this step: held
    world.expose("profile", 3000, {"on": 0.05, "off": 0.05})

    made = world.guardian.look()  # healthy: nothing to record but the plan's start
    assert [d.kind for d in made] == [Kind.ADVANCE] and "started" in made[0].message
    assert world.decisions.look("profile").outcome == "healthy"  # type: ignore[union-attr]
    world.rollouts.tick()

    plan = world.rollouts.plan("profile")
    assert (plan.index, plan.status) == (1, COMPLETED)
    made = world.guardian.look()
    assert [d.kind for d in made] == [Kind.ADVANCE, Kind.COMPLETE]
    assert "step 2/2" in made[0].message
    assert kinds(world, "profile") == ["advance", "advance", "complete"]
    sent = {b["kind"] for b in hooks.wait_for(3)}
    assert sent == {"advance", "complete"}


def test_a_look_taken_before_the_step_does_not_let_the_next_step_pass(world: World) -> None:
    start_plan(world, "cart", steps=(10, 50, 100))
    world.expose("cart", 8000, {"on": 0.05, "off": 0.05})
    world.guardian.look()
    world.rollouts.tick()
    assert world.rollouts.plan("cart").index == 1
    time.sleep(0.01)
    world.rollouts.tick()  # the healthy look predates step 2: wait for a new one
    assert world.rollouts.plan("cart").index == 1
    assert "waiting for a guardrail look" in world.rollouts.waiting["cart"]


def test_an_unguarded_plan_is_not_held(world: World) -> None:
    world.add_flag("plain")
    world.rollouts.start("plain", (10, 100), 0, "on", author="test")
    world.rollouts.tick()
    assert world.rollouts.plan("plain").status == COMPLETED
    made = world.guardian.look()
    assert [d.kind for d in made] == [Kind.ADVANCE, Kind.ADVANCE, Kind.COMPLETE]


def test_the_loop_runs_on_its_own_timer(world: World) -> None:
    start_plan(world, "timer")
    world.expose("timer", 3000, {"on": 0.30, "off": 0.05})
    world.guardian.interval = 0.2
    world.guardian.start()
    deadline = time.monotonic() + 10
    while not world.store.state.flags.flags["timer"]["killed"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.store.state.flags.flags["timer"]["killed"] is True
