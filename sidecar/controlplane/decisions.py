"""What the guardrails decided, kept in the flag store's database: the decisions timeline, and
each flag's latest look.

Decisions (``fader_decisions``) are what a person reads after the fact: breach, kill, SRM
pause, hold, step advanced, plan complete; each with a message and JSON details. A decision's
id is derived from what it is about (``flag:kill:version 12``, ``flag:advance:<step time>``),
so writing one again (a second replica, a restarted loop re-reading a plan) stores nothing
and alerts nobody: ``record`` says whether it was new.

The latest look (``fader_guardrail_looks``) is the loop's last verdict per flag, with the time
it was taken. The rollout gate reads it from the database, so a replica that does not run the
loop (it has no exposure store) still holds a plan the loop holds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from sidecar.controlplane.definitions import ensure_schema as _ensure_definitions
from sidecar.controlplane.storedb import Database

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS fader_decisions (id TEXT PRIMARY KEY,"
    " at DOUBLE PRECISION NOT NULL, flag TEXT NOT NULL, kind TEXT NOT NULL,"
    " message TEXT NOT NULL, details TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fader_decisions_by_flag ON fader_decisions (flag, at)",
    "CREATE TABLE IF NOT EXISTS fader_guardrail_looks (flag TEXT PRIMARY KEY,"
    " at DOUBLE PRECISION NOT NULL, outcome TEXT NOT NULL, message TEXT NOT NULL)",
)


class Kind(StrEnum):
    BREACH = "breach"  # a guardrail's confidence sequence lies beyond the tolerance
    KILL = "kill"  # the flag was killed for it
    SRM_PAUSE = "srm_pause"  # exposures do not follow the dial: the plan paused
    HOLD = "hold"  # no data or too little: the plan stays at its step
    ADVANCE = "advance"  # the plan took its next step
    COMPLETE = "complete"  # the plan reached its last step


@dataclass(frozen=True)
class Decision:
    id: str
    time: float
    flag: str
    kind: Kind
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "flag": self.flag,
            "kind": self.kind.value,
            "message": self.message,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class Look:
    """The loop's latest verdict on a flag: ``outcome`` is a statistics ``Outcome`` value."""

    flag: str
    time: float
    outcome: str
    message: str


class DecisionLog:
    """Decisions and latest looks on a store ``Database``; counts what this process recorded."""

    def __init__(self, db: Database) -> None:
        self.db = db
        _ensure_definitions(db)
        with db.transaction() as tx:
            for statement in SCHEMA:
                tx.run(statement)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {kind.value: 0 for kind in Kind}

    def record(self, decision: Decision) -> bool:
        """Store it; False (nothing stored) when a decision with this id exists."""
        with self.db.transaction() as tx:
            added: int = tx.run(
                "INSERT INTO fader_decisions (id, at, flag, kind, message, details)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (
                    decision.id,
                    decision.time,
                    decision.flag,
                    decision.kind.value,
                    decision.message,
                    json.dumps(dict(decision.details), separators=(",", ":"), default=str),
                ),
            )
        if added:
            with self._lock:
                self.counts[decision.kind.value] += 1
        return added > 0

    def for_flag(self, flag: str, limit: int = 500) -> list[Decision]:
        """The flag's newest ``limit`` decisions, oldest first."""
        with self.db.transaction() as tx:
            rows = tx.query(
                "SELECT id, at, flag, kind, message, details FROM fader_decisions"
                " WHERE flag = ? ORDER BY at DESC, id DESC LIMIT ?",
                (flag, limit),
            )
        return [_decision(row) for row in reversed(rows)]

    def put_look(self, look: Look) -> None:
        with self.db.transaction() as tx:
            tx.run(
                "INSERT INTO fader_guardrail_looks (flag, at, outcome, message) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (flag) DO UPDATE SET at = excluded.at, outcome = excluded.outcome,"
                " message = excluded.message",
                (look.flag, look.time, look.outcome, look.message),
            )

    def look(self, flag: str) -> Look | None:
        with self.db.transaction() as tx:
            rows = tx.query(
                "SELECT at, outcome, message FROM fader_guardrail_looks WHERE flag = ?", (flag,)
            )
        if not rows:
            return None
        at, outcome, message = rows[0]
        return Look(flag, float(at), str(outcome), str(message))


def decision(
    flag: str,
    kind: Kind,
    message: str,
    about: str,
    details: Mapping[str, Any] | None = None,
    at: float | None = None,
) -> Decision:
    """A decision whose id is ``flag:kind:about`` (what makes it the same decision again)."""
    return Decision(
        f"{flag}:{kind.value}:{about}",
        time.time() if at is None else at,
        flag,
        kind,
        message,
        dict(details or {}),
    )


def _decision(row: tuple[Any, ...]) -> Decision:
    id_, at, flag, kind, message, details = row
    return Decision(str(id_), float(at), str(flag), Kind(kind), str(message), json.loads(details))
