"""Rollout plans: a release that dials itself up, step by step, and can be stopped.

A plan names a flag, a treatment and steps (``1,5,25,50,100`` percent). Starting it
dials the first step at once; each later step is dialled once the previous one has been
held for ``hold`` seconds *and* the gate allows it (``Gate``; the default always does,
the guardrails plug theirs in). Every step is a new version of the flag set with the reason
``rollout step k/n``, written in the same transaction as the plan's new state, so the plan
lives in the store: a restarted control plane resumes at the step it was at, and replicas
sharing a database never both take the same step.

Pause keeps the current dial; resume restarts the current step's hold. Abort dials the
treatment back to 0 % (the flag stays live for its other rules; ``kill`` is the separate,
harder stop). A killed flag pauses its running plan; a deleted flag aborts it.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from sidecar.controlplane import dimmer
from sidecar.controlplane.edits import SplitOnly, UnknownFlag
from sidecar.controlplane.flagset import FLAGD
from sidecar.controlplane.store import FlagStore, Written, save_plan
from sidecar.controlplane.storedb import Tx

log = logging.getLogger(__name__)

RUNNING: Final = "running"
PAUSED: Final = "paused"
COMPLETED: Final = "completed"
ABORTED: Final = "aborted"
KILLED: Final = "killed"
ACTIVE: Final = (RUNNING, PAUSED)

ROLLOUT_AUTHOR: Final = "rollout"


class PlanError(ValueError):
    """A plan operation that does not fit the plan's state (HTTP 409)."""


class NoPlan(LookupError):
    """No rollout plan for that flag (HTTP 404)."""


class _Superseded(Exception):
    """The plan changed under us (another replica took the step): undo and move on."""


@dataclass(frozen=True)
class Plan:
    """A rollout plan as stored (JSON in ``fader_rollouts``)."""

    flag: str
    treatment: str
    steps: tuple[int, ...]
    hold_seconds: float
    index: int  # the step currently dialled (0-based)
    status: str
    step_started_at: float  # when the current step's hold began (unix seconds)
    started_at: float
    author: str
    reason: str = ""
    note: str = ""  # why it is paused, aborted or killed
    events: tuple[dict[str, Any], ...] = field(default=())

    @property
    def step_label(self) -> str:
        return f"{self.index + 1}/{len(self.steps)}"

    @property
    def percent(self) -> int:
        return self.steps[self.index]

    def due_at(self) -> float | None:
        """When the next step may be taken (None when there is no next step)."""
        if self.index + 1 >= len(self.steps):
            return None
        return self.step_started_at + self.hold_seconds

    def to_json(self) -> str:
        raw = asdict(self)
        raw["steps"] = list(self.steps)
        raw["events"] = list(self.events)
        return json.dumps(raw, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Plan:
        raw = json.loads(text)
        raw["steps"] = tuple(raw["steps"])
        raw["events"] = tuple(raw.get("events", ()))
        return Plan(**raw)

    def event(self, action: str, author: str, reason: str, at: float) -> Plan:
        entry = {"time": at, "action": action, "author": author, "reason": reason}
        return replace(self, events=(*self.events, entry)[-50:])

    def view(self, now: float) -> dict[str, Any]:
        """As the API shows it."""
        due = self.due_at() if self.status == RUNNING else None
        return {
            "flag": self.flag,
            "treatment": self.treatment,
            "steps": list(self.steps),
            "hold_seconds": self.hold_seconds,
            "step": self.index + 1,
            "percent": self.percent,
            "status": self.status,
            "note": self.note,
            "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "next_step_at": due,
            "next_step_in_seconds": None if due is None else max(0.0, due - now),
            "author": self.author,
            "reason": self.reason,
            "events": list(self.events),
        }


@dataclass(frozen=True)
class GateDecision:
    """Whether a plan may take its next step now, and why not."""

    allowed: bool
    reason: str = ""


Gate = Callable[[Plan], GateDecision]


def always_allow(plan: Plan) -> GateDecision:
    return GateDecision(True)


def parse_steps(text: str) -> tuple[int, ...]:
    """``1,5,25,50,100`` -> (1, 5, 25, 50, 100); rising percentages 0..100."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"steps {text!r}: comma-separated whole percentages") from None
    check_steps(steps)
    return steps


def check_steps(steps: tuple[int, ...]) -> None:
    if not steps:
        raise ValueError("a plan needs at least one step")
    if any(not 0 <= s <= 100 for s in steps):
        raise ValueError("steps are percentages 0..100")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError("steps must rise (the dimmer only adds keys on the way up)")


class RolloutEngine:
    """Starts, advances, pauses, resumes and aborts plans; one daemon thread ticks."""

    def __init__(
        self,
        store: FlagStore,
        *,
        gate: Gate = always_allow,
        tick_seconds: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.gate = gate
        self.tick_seconds = tick_seconds
        self.clock = clock
        self.waiting: dict[str, str] = {}  # flag -> why the gate holds its next step
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading -------------------------------------------------------------------------

    def plans(self) -> dict[str, Plan]:
        return {flag: Plan.from_json(raw) for flag, raw in self.store.plans().items()}

    def plan(self, flag: str) -> Plan:
        plan = self.plans().get(flag)
        if plan is None:
            raise NoPlan(f"no rollout plan for {flag!r}")
        return plan

    def view(self, plan: Plan) -> dict[str, Any]:
        shown = plan.view(self.clock())
        shown["gate"] = self.waiting.get(plan.flag, "")
        return shown

    def is_running(self, flag: str) -> bool:
        plan = self.plans().get(flag)
        return plan is not None and plan.status == RUNNING

    # --- operations ------------------------------------------------------------------------

    def start(
        self,
        flag: str,
        steps: tuple[int, ...],
        hold_seconds: float,
        treatment: str | None = None,
        *,
        author: str,
        reason: str = "",
    ) -> tuple[Plan, Written]:
        """Create the plan and dial its first step now."""
        check_steps(steps)
        if hold_seconds < 0:
            raise ValueError("hold must be >= 0 seconds")
        existing = self.plans().get(flag)
        if existing is not None and existing.status in ACTIVE:
            raise PlanError(
                f"{flag} already has a {existing.status} rollout (step {existing.step_label});"
                " abort it first"
            )
        flags = self.store.state.flags
        if flags.dialect(flag) == FLAGD:
            raise SplitOnly(flag, "a rollout plan")
        definition = flags.flags.get(flag)
        if definition is None:
            raise UnknownFlag(flag)
        chosen = treatment or _dial_treatment(definition)
        now = self.clock()
        plan = Plan(flag, chosen, steps, hold_seconds, 0, RUNNING, now, now, author, reason)
        plan = plan.event("start", author, reason, now)
        if len(steps) == 1:
            plan = replace(plan, status=COMPLETED)
        written = self.store.dial(
            flag,
            steps[0],
            chosen,
            author=author,
            reason=f"rollout step 1/{len(steps)}" + (f": {reason}" if reason else ""),
            hook=lambda tx, _version: save_plan(tx, flag, plan.to_json()),
        )
        self.waiting.pop(flag, None)
        return plan, written

    def pause(self, flag: str, *, author: str, reason: str = "") -> Plan:
        def pause(plan: Plan, now: float) -> Plan:
            if plan.status != RUNNING:
                raise PlanError(f"the rollout of {flag} is {plan.status}, not running")
            return replace(plan, status=PAUSED, note=reason or "paused").event(
                "pause", author, reason, now
            )

        return self._update(flag, pause)

    def resume(self, flag: str, *, author: str, reason: str = "") -> Plan:
        def resume(plan: Plan, now: float) -> Plan:
            if plan.status != PAUSED:
                raise PlanError(f"the rollout of {flag} is {plan.status}, not paused")
            if self.store.state.flags.flags.get(flag, {}).get("killed"):
                raise PlanError(f"{flag} is killed: revive it before resuming its rollout")
            status = COMPLETED if plan.index + 1 >= len(plan.steps) else RUNNING
            return replace(plan, status=status, note="", step_started_at=now).event(
                "resume", author, reason, now
            )

        return self._update(flag, resume)

    def abort(self, flag: str, *, author: str, reason: str = "") -> tuple[Plan, Written]:
        """Dial the plan's treatment back to 0 % and end the plan."""
        plan = self.plan(flag)
        if plan.status not in ACTIVE:
            raise PlanError(f"the rollout of {flag} is already {plan.status}")
        now = self.clock()
        ended = replace(plan, status=ABORTED, note=reason or "aborted").event(
            "abort", author, reason, now
        )
        written = self.store.dial(
            flag,
            0,
            plan.treatment,
            author=author,
            reason="rollout aborted" + (f": {reason}" if reason else ""),
            hook=lambda tx, _version: self._replace_plan(tx, plan, ended),
        )
        self.waiting.pop(flag, None)
        return ended, written

    def kill(
        self, flag: str, *, author: str, reason: str, base_version: int | None = None
    ) -> Written:
        """Kill the flag and end its plan (for the guardrails: one call, one version)."""
        plan = self.plans().get(flag)
        now = self.clock()

        def hook(tx: Tx, _version: int) -> None:
            if plan is not None and plan.status in ACTIVE:
                ended = replace(plan, status=KILLED, note=reason).event("kill", author, reason, now)
                self._replace_plan(tx, plan, ended)

        return self.store.kill(
            flag, author=author, reason=reason, base_version=base_version, hook=hook
        )

    def _update(self, flag: str, change: Callable[[Plan, float], Plan]) -> Plan:
        """Change a plan without a new flag-set version (pause, resume)."""
        with self.store.db.transaction() as tx:
            raw = tx.lock_plan(flag)
            if raw is None:
                raise NoPlan(f"no rollout plan for {flag!r}")
            updated = change(Plan.from_json(raw), self.clock())
            save_plan(tx, flag, updated.to_json())
        self.waiting.pop(flag, None)
        return updated

    @staticmethod
    def _replace_plan(tx: Tx, expected: Plan, updated: Plan) -> None:
        """Save ``updated`` only if the stored plan is still ``expected``."""
        raw = tx.lock_plan(expected.flag)
        if raw is None or Plan.from_json(raw) != expected:
            raise _Superseded()
        save_plan(tx, expected.flag, updated.to_json())

    # --- the clock -------------------------------------------------------------------------

    def tick(self) -> None:
        """Take every step that is due (and allowed); at most one step per plan per tick."""
        for plan in self.plans().values():
            if plan.status == RUNNING:
                try:
                    self.advance(plan)
                except Exception:
                    log.exception("rollout of %s: cannot take the next step", plan.flag)

    def advance(self, plan: Plan) -> bool:
        """Take ``plan``'s next step if it is due and allowed; False when it was not, or when
        the stored plan is no longer ``plan`` (another replica moved it first)."""
        try:
            return self._advance(plan)
        except _Superseded:
            log.debug("rollout of %s changed meanwhile; re-reading", plan.flag)
            return False

    def _advance(self, plan: Plan) -> bool:
        now = self.clock()
        flags = self.store.state.flags
        definition = flags.flags.get(plan.flag)
        if definition is None:
            gone = "is a flagd flag now" if flags.dialect(plan.flag) == FLAGD else "was deleted"
            self._end(plan, ABORTED, f"the flag {gone}", now)
            return False
        if definition.get("killed"):
            self._end(plan, PAUSED, "the flag is killed", now)
            return False
        due = plan.due_at()
        if due is None:
            self._end(plan, COMPLETED, "", now)
            return False
        if now < due:
            return False
        decision = self.gate(plan)
        if not decision.allowed:
            if self.waiting.get(plan.flag) != decision.reason:
                log.info(
                    "rollout of %s held at step %s: %s", plan.flag, plan.step_label, decision.reason
                )
            self.waiting[plan.flag] = decision.reason or "held by the gate"
            return False
        self.waiting.pop(plan.flag, None)
        index = plan.index + 1
        label = f"{index + 1}/{len(plan.steps)}"
        status = COMPLETED if index + 1 >= len(plan.steps) else RUNNING
        updated = replace(plan, index=index, step_started_at=now, status=status)
        updated = updated.event("step", ROLLOUT_AUTHOR, f"rollout step {label}", now)
        self.store.dial(
            plan.flag,
            plan.steps[index],
            plan.treatment,
            author=ROLLOUT_AUTHOR,
            reason=f"rollout step {label}",
            hook=lambda tx, _version: self._replace_plan(tx, plan, updated),
        )
        log.info("rollout of %s: step %s (%d %%)", plan.flag, label, plan.steps[index])
        return True

    def _end(self, plan: Plan, status: str, note: str, now: float) -> None:
        updated = replace(plan, status=status, note=note).event(status, ROLLOUT_AUTHOR, note, now)
        with self.store.db.transaction() as tx:
            self._replace_plan(tx, plan, updated)

    def start_ticking(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rollouts")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:
                log.exception("rollout tick failed; next tick in %.2f s", self.tick_seconds)


def _dial_treatment(definition: dict[str, Any]) -> str:
    """The treatment a plan dials when none is named: the one ``dial`` would pick."""
    try:
        return dimmer.dial(definition, 0).treatment
    except dimmer.DialError as exc:
        raise ValueError(f"{definition.get('name')}: {exc.message}") from None
