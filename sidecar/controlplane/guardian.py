"""The guardrail loop: every interval, look at each guarded flag and act on what it shows.

Per flag with guardrails that is live (not killed, not deleted), one ``assessment.assess``:

* **breach** (a guardrail's confidence sequence lies beyond its tolerance): the flag is
  killed with the reason ``guardrail <metric>: +2.1 pts, CS [+1.2, +3.0]`` and its rollout
  plan stops, in one new version (``RolloutEngine.kill``); decisions ``breach`` and ``kill``.
* **SRM** (exposures do not follow the dial): a running plan is paused (``srm_pause``); a
  person resumes it once the cause is found, and the next look pauses it again if not.
* **hold** (no data, or too little): the plan stays at its step. Recorded once per flag
  version (per step), not at every look, so the timeline stays readable.
* **healthy**: nothing to do here; the rollout's gate lets the plan take its next step once
  its hold time has passed.

The gate (``LookGate``, plugged into ``RolloutEngine``) allows a guarded plan's next step only
when the latest look, taken after the step began, was healthy. It reads that look from the
database, so replicas without the exposure store hold plans too. Unguarded plans pass.

Steps taken and plans completed are read back from the plans' own event lists at every look
and recorded as ``advance`` / ``complete`` (ids from the event's time: recorded once).

Every new decision is queued to the alerts (global webhooks and the flag's), except holds
and decisions older than the loop itself (history read back at start alerts nobody).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sidecar.controlplane import alerts as alerts_module
from sidecar.controlplane.alerts import Alerts
from sidecar.controlplane.assessment import Assessment, analysis_start_ms, assess
from sidecar.controlplane.decisions import Decision, DecisionLog, Kind, Look, decision
from sidecar.controlplane.definitions import Definitions, GuardrailDef, MetricDef
from sidecar.controlplane.exposures import DEFAULT_WINDOW_MS, ExposureStore
from sidecar.controlplane.flagset import FLAG
from sidecar.controlplane.rollout import (
    ACTIVE,
    COMPLETED,
    RUNNING,
    GateDecision,
    Plan,
    PlanError,
    RolloutEngine,
)
from sidecar.controlplane.statistics import DEFAULT_MIN_SAMPLE, Outcome
from sidecar.controlplane.store import FlagStore

log = logging.getLogger(__name__)

AUTHOR: Final = "guardrail"
DEFAULT_INTERVAL: Final = 60.0
_STEP_REASON = re.compile(r"rollout step (\d+)/(\d+)")
PageUrl = Callable[[str], str | None]


class LookGate:
    """The rollout gate: a guarded plan's next step needs a healthy look taken at this step.

    It reads definitions and looks from the database only, so every replica can use it,
    whether or not it runs the loop."""

    def __init__(self, definitions: Definitions, decisions: DecisionLog) -> None:
        self.definitions = definitions
        self.decisions = decisions

    def __call__(self, plan: Plan) -> GateDecision:
        """May ``plan`` take its next step now? (Its hold time has passed already.)"""
        try:
            guarded = bool(self.definitions.guardrails(plan.flag))
            look = self.decisions.look(plan.flag) if guarded else None
        except Exception as exc:  # the database is away: never advance blind
            return GateDecision(False, f"guardrails unreadable: {exc}")
        if not guarded:
            return GateDecision(True)
        if look is None or look.time < plan.step_started_at:
            return GateDecision(False, "waiting for a guardrail look at this step")
        if look.outcome == Outcome.HEALTHY.value:
            return GateDecision(True)
        return GateDecision(False, f"guardrail {look.outcome}: {look.message}")


class Guardian:
    """Runs the looks (``look``) on a timer; ``gate`` is the rollout gate that goes with them."""

    def __init__(
        self,
        store: FlagStore,
        rollouts: RolloutEngine,
        exposures: ExposureStore,
        definitions: Definitions,
        decisions: DecisionLog,
        alerts: Alerts | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        window_ms: int = DEFAULT_WINDOW_MS,
        min_sample: int = DEFAULT_MIN_SAMPLE,
        page_url: PageUrl | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError("the guardrail interval must be > 0 seconds")
        self.store = store
        self.rollouts = rollouts
        self.exposures = exposures
        self.definitions = definitions
        self.decisions = decisions
        self.alerts = alerts
        self.interval = interval
        self.window_ms = window_ms
        self.min_sample = min_sample
        self.page_url = page_url
        self.clock = clock
        self.started_at = clock()
        self.looks = 0
        self.gate = LookGate(definitions, decisions)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the looks -------------------------------------------------------------------------

    def look(self) -> list[Decision]:
        """One pass over every guarded flag and every plan; the decisions that were new."""
        self.looks += 1
        state = self.store.state
        plans = self.rollouts.plans()
        metrics = {m.name: m for m in self.definitions.metrics()}
        new: list[Decision] = []
        for flag, rules in self.definitions.guarded_flags().items():
            definition = state.flags.flags.get(flag)
            if definition is None or definition.get("killed"):
                continue  # deleted or killed: nothing is served to judge
            try:
                new += self._look_at(
                    flag,
                    definition,
                    state.changed.get((FLAG, flag), state.version),
                    rules,
                    metrics,
                    plans.get(flag),
                )
            except Exception:
                log.exception(
                    "guardrails of %s: the look failed; next look in %.0f s", flag, self.interval
                )
        for plan in self.rollouts.plans().values():
            new += self._steps_of(plan)
        for made in new:
            self._alert(made)
        return new

    def _look_at(
        self,
        flag: str,
        definition: Mapping[str, Any],
        change_number: int,
        rules: Sequence[GuardrailDef],
        metrics: Mapping[str, MetricDef],
        plan: Plan | None,
    ) -> list[Decision]:
        known = [(rule, metrics[rule.metric]) for rule in rules if rule.metric in metrics]
        found = assess(
            self.exposures,
            flag,
            definition,
            change_number,
            known,
            since_ms=analysis_start_ms(plan, rules),
            window_ms=self.window_ms,
            min_sample=self.min_sample,
        )
        now = self.clock()
        outcome = found.outcome or Outcome.HEALTHY
        self.decisions.put_look(Look(flag, now, outcome.value, found.message))
        if outcome is Outcome.BREACH:
            return self._kill(found, plan, now)
        if outcome is Outcome.SRM:
            return self._pause(found, plan, now)
        if outcome is Outcome.HOLD:
            made = decision(
                flag, Kind.HOLD, found.message, str(change_number), found.details(), now
            )
            return [made] if self.decisions.record(made) else []
        return []

    def _kill(self, found: Assessment, plan: Plan | None, now: float) -> list[Decision]:
        flag, reason = found.flag, f"guardrail {found.message}"
        written = self.rollouts.kill(flag, author=AUTHOR, reason=reason)
        about = str(written.version)
        details = found.details()
        made = [decision(flag, Kind.BREACH, found.message, about, details, now)]
        if written.changed:
            stopped = plan is not None and plan.status in ACTIVE
            made.append(
                decision(
                    flag,
                    Kind.KILL,
                    f"killed at version {written.version}: {reason}"
                    + (f" (rollout stopped at {plan.percent} %)" if stopped and plan else ""),
                    about,
                    {"version": written.version, "reason": reason, "plan_stopped": stopped},
                    now,
                )
            )
            log.warning("guardrail killed %s (version %d): %s", flag, written.version, reason)
        return [d for d in made if self.decisions.record(d)]

    def _pause(self, found: Assessment, plan: Plan | None, now: float) -> list[Decision]:
        flag = found.flag
        if plan is not None and plan.status == RUNNING:
            try:
                self.rollouts.pause(flag, author=AUTHOR, reason=found.message)
            except PlanError:
                pass  # it stopped running meanwhile: nothing left to pause
            else:
                about = f"{found.change_number}:{now:.3f}"
                message = f"rollout paused at {plan.percent} %: {found.message}"
                made = decision(flag, Kind.SRM_PAUSE, message, about, found.details(), now)
                log.warning("guardrail paused the rollout of %s: %s", flag, found.message)
                return [made] if self.decisions.record(made) else []
        made = decision(
            flag, Kind.SRM_PAUSE, found.message, str(found.change_number), found.details(), now
        )
        return [made] if self.decisions.record(made) else []

    def _steps_of(self, plan: Plan) -> list[Decision]:
        """Record the plan's steps (and its completion) that are not recorded yet."""
        made: list[Decision] = []
        last_step = len(plan.steps)
        for event in plan.events:
            if event.get("action") == "start":
                step, verb = 1, "rollout started, step"
            elif event.get("action") == "step":
                match = _STEP_REASON.search(str(event.get("reason", "")))
                if match is None:
                    continue
                step, verb = int(match.group(1)), "rollout step"
            else:
                continue
            at = float(event["time"])
            percent = plan.steps[step - 1] if step <= last_step else None
            message = f"{verb} {step}/{last_step}: {plan.treatment} at {percent} %"
            details = {"step": step, "steps": list(plan.steps), "percent": percent}
            made.append(decision(plan.flag, Kind.ADVANCE, message, f"{at:.6f}", details, at))
        if plan.status == COMPLETED:
            at = max((float(e["time"]) for e in plan.events), default=plan.started_at)
            message = f"rollout complete: {plan.treatment} at {plan.percent} %"
            details = {"steps": list(plan.steps), "percent": plan.percent}
            made.append(
                decision(plan.flag, Kind.COMPLETE, message, f"{plan.started_at:.6f}", details, at)
            )
        return [d for d in made if self.decisions.record(d)]

    def _alert(self, made: Decision) -> None:
        if self.alerts is None or made.kind is Kind.HOLD or made.time < self.started_at - 1:
            return
        try:
            hooks = self.definitions.webhooks(made.flag)
        except Exception:
            log.exception("cannot read the webhooks of %s; alerting the global ones", made.flag)
            hooks = []
        page = self.page_url(made.flag) if self.page_url else None
        self.alerts.send(alerts_module.payload(made, page), hooks)

    # --- the timer -------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="guardrails")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            begun = time.monotonic()
            try:
                self.look()
            except Exception:
                log.exception("guardrail look failed; next in %.0f s", self.interval)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - begun)))
