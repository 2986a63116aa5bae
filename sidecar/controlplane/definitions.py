"""Metric and guardrail definitions, kept in the flag store's database.

Why there: every control-plane replica sharing one database sees the same metrics and the
same guardrails, and a restarted control plane keeps them, exactly like flags and rollout
plans. The tables are this module's own, created next to the store's (``ensure_schema``),
with the same portable SQL (``?`` placeholders, ``ON CONFLICT``) on SQLite and PostgreSQL:

* ``fader_metrics(name, body, updated_at)``: a metric: which event type, how a unit's value
  is made from it (conversion, count, mean of ``value``), and which direction is better.
* ``fader_guardrails(flag, metric, body, created_at, updated_at)``: a metric guarding a flag,
  with the regression tolerated in the metric's own unit (0.01 = one point of conversion)
  and the baseline treatment the others are compared with.
* ``fader_guardrail_webhooks(flag, url)``: where this flag's decisions are also POSTed.

The checks are here, not in the HTTP layer, so the API and in-process callers refuse the
same things with the same words (``DefinitionError``, HTTP 422; ``NotFound``, 404;
``InUse``, 409).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sidecar.controlplane.statistics import Direction, MetricKind
from sidecar.controlplane.storedb import Database, Tx

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS fader_metrics (name TEXT PRIMARY KEY, body TEXT NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fader_guardrails (flag TEXT NOT NULL, metric TEXT NOT NULL,"
    " body TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (flag, metric))",
    "CREATE TABLE IF NOT EXISTS fader_guardrail_webhooks (flag TEXT NOT NULL, url TEXT NOT NULL,"
    " PRIMARY KEY (flag, url))",
)

DEFAULT_BASELINE: Final = "off"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# Split's event type rule (the sidecar refuses Track events that break it).
_EVENT_TYPE = re.compile(r"^[a-zA-Z0-9][-_.:a-zA-Z0-9]{0,79}$")
MAX_URL_CHARS: Final = 2048


class DefinitionError(ValueError):
    """A definition that cannot be stored as given (the message says what is wrong)."""


class NotFound(LookupError):
    """No such metric, guardrail or flag."""


class InUse(Exception):
    """A metric still guards flags and cannot be deleted."""


@dataclass(frozen=True)
class MetricDef:
    """A metric: the event type it reads, how a unit's value is made, which way is better."""

    name: str
    event_type: str
    kind: MetricKind
    direction: Direction
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "event": self.event_type,
            "kind": self.kind.value,
            "direction": self.direction.value,
            "description": self.description,
        }

    @staticmethod
    def parse(name: str, raw: Any) -> MetricDef:
        """From the API's JSON (``event``, ``kind``, ``direction``, ``description``)."""
        if not isinstance(raw, dict):
            raise DefinitionError("a metric is a JSON object")
        check_name(name, "metric name")
        event = raw.get("event")
        if not isinstance(event, str) or not _EVENT_TYPE.match(event):
            raise DefinitionError(
                f"event: {event!r} is not an event type (letters, digits and -_.:, up to 80)"
            )
        description = raw.get("description", "")
        if not isinstance(description, str) or len(description) > 500:
            raise DefinitionError("description: a string of at most 500 characters")
        return MetricDef(
            name,
            event,
            _choice(MetricKind, raw.get("kind"), "kind"),
            _choice(Direction, raw.get("direction"), "direction"),
            description,
        )


@dataclass(frozen=True)
class GuardrailDef:
    """A metric guarding a flag: a regression beyond ``max_regression`` kills the flag."""

    flag: str
    metric: str
    max_regression: float
    baseline: str = DEFAULT_BASELINE
    created_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "metric": self.metric,
            "max_regression": self.max_regression,
            "baseline": self.baseline,
            "created_at": self.created_at,
        }


def check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{what} {name!r}: letters, digits and _.:- (up to 64, starting with a letter or digit)"
        )


def check_regression(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DefinitionError(f"max_regression: a number >= 0, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise DefinitionError(f"max_regression: a finite number >= 0, got {value!r}")
    return number


def check_webhook(url: Any) -> str:
    """An http(s) URL with a host; anything else would fail at every alert."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise DefinitionError(f"webhook: a URL of at most {MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DefinitionError(f"webhook {url!r}: must be an http:// or https:// URL with a host")
    return url


def _choice(kind: Any, value: Any, field: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = "|".join(member.value for member in kind)
        raise DefinitionError(f"{field}: {allowed}, got {value!r}") from None


def ensure_schema(db: Database) -> None:
    """Create the tables (idempotent). Replicas starting together on PostgreSQL can race on
    CREATE TABLE IF NOT EXISTS; the loser's retry finds the tables there."""
    for attempt in range(3):
        try:
            with db.transaction() as tx:
                for statement in SCHEMA:
                    tx.run(statement)
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.2)


class Definitions:
    """Metrics, guardrails and per-flag webhooks on a store ``Database``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        ensure_schema(db)

    # --- metrics ---------------------------------------------------------------------------

    def metrics(self) -> list[MetricDef]:
        with self.db.transaction() as tx:
            rows = tx.query("SELECT name, body FROM fader_metrics ORDER BY name")
        return [_metric(str(name), str(body)) for name, body in rows]

    def metric(self, name: str) -> MetricDef:
        with self.db.transaction() as tx:
            found = _metric_row(tx, name)
        if found is None:
            raise NotFound(f"no metric named {name!r}")
        return found

    def put_metric(self, metric: MetricDef) -> bool:
        """Create or replace; True when it was new."""
        body = json.dumps(metric.to_json(), separators=(",", ":"))
        with self.db.transaction() as tx:
            existed = _metric_row(tx, metric.name) is not None
            tx.run(
                "INSERT INTO fader_metrics (name, body, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET body = excluded.body,"
                " updated_at = excluded.updated_at",
                (metric.name, body, time.time()),
            )
        return not existed

    def delete_metric(self, name: str) -> None:
        with self.db.transaction() as tx:
            users = tx.query("SELECT flag FROM fader_guardrails WHERE metric = ?", (name,))
            if users:
                flags = ", ".join(sorted(str(row[0]) for row in users))
                raise InUse(f"metric {name!r} guards {flags}: clear those guardrails first")
            if tx.run("DELETE FROM fader_metrics WHERE name = ?", (name,)) == 0:
                raise NotFound(f"no metric named {name!r}")

    # --- guardrails ------------------------------------------------------------------------

    def guardrails(self, flag: str | None = None) -> list[GuardrailDef]:
        """Every guardrail (of ``flag`` when given), by flag then metric."""
        sql = "SELECT flag, metric, body, created_at FROM fader_guardrails"
        params: tuple[Any, ...] = ()
        if flag is not None:
            sql += " WHERE flag = ?"
            params = (flag,)
        with self.db.transaction() as tx:
            rows = tx.query(sql + " ORDER BY flag, metric", params)
        return [_guardrail(row) for row in rows]

    def guarded_flags(self) -> dict[str, list[GuardrailDef]]:
        out: dict[str, list[GuardrailDef]] = {}
        for rule in self.guardrails():
            out.setdefault(rule.flag, []).append(rule)
        return out

    def set_guardrail(
        self,
        flag: str,
        metric: str,
        max_regression: float,
        baseline: str = DEFAULT_BASELINE,
        webhooks: Sequence[str] = (),
    ) -> GuardrailDef:
        """Create or replace the guardrail of ``metric`` on ``flag``, and add ``webhooks``.

        The caller checks that the flag exists and has the baseline treatment (the flag set
        is not this module's); the metric must exist here."""
        check_name(flag, "flag")
        tolerance = check_regression(max_regression)
        check_name(baseline, "baseline treatment")
        urls = [check_webhook(url) for url in webhooks]
        now = time.time()
        with self.db.transaction() as tx:
            if _metric_row(tx, metric) is None:
                raise NotFound(
                    f"no metric named {metric!r}: create it first (fader metrics create)"
                )
            rows = tx.query(
                "SELECT created_at FROM fader_guardrails WHERE flag = ? AND metric = ?",
                (flag, metric),
            )
            created = float(rows[0][0]) if rows else now
            body = json.dumps({"max_regression": tolerance, "baseline": baseline})
            tx.run(
                "INSERT INTO fader_guardrails (flag, metric, body, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (flag, metric) DO UPDATE SET"
                " body = excluded.body, updated_at = excluded.updated_at",
                (flag, metric, body, created, now),
            )
            for url in urls:
                tx.run(
                    "INSERT INTO fader_guardrail_webhooks (flag, url) VALUES (?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (flag, url),
                )
        return GuardrailDef(flag, metric, tolerance, baseline, created)

    def clear(self, flag: str, metric: str | None = None) -> int:
        """Remove the flag's guardrails (one metric's, or all with its webhooks); how many."""
        with self.db.transaction() as tx:
            if metric is not None:
                return int(
                    tx.run(
                        "DELETE FROM fader_guardrails WHERE flag = ? AND metric = ?", (flag, metric)
                    )
                )
            removed = int(tx.run("DELETE FROM fader_guardrails WHERE flag = ?", (flag,)))
            tx.run("DELETE FROM fader_guardrail_webhooks WHERE flag = ?", (flag,))
            return removed

    def webhooks(self, flag: str) -> list[str]:
        with self.db.transaction() as tx:
            rows = tx.query(
                "SELECT url FROM fader_guardrail_webhooks WHERE flag = ? ORDER BY url", (flag,)
            )
        return [str(row[0]) for row in rows]


def _metric_row(tx: Tx, name: str) -> MetricDef | None:
    rows = tx.query("SELECT body FROM fader_metrics WHERE name = ?", (name,))
    return _metric(name, str(rows[0][0])) if rows else None


def _metric(name: str, body: str) -> MetricDef:
    raw = json.loads(body)
    return MetricDef(
        name,
        raw["event"],
        MetricKind(raw["kind"]),
        Direction(raw["direction"]),
        raw.get("description", ""),
    )


def _guardrail(row: Sequence[Any]) -> GuardrailDef:
    flag, metric, body, created_at = row
    raw = json.loads(body)
    return GuardrailDef(
        str(flag), str(metric), float(raw["max_regression"]), raw["baseline"], float(created_at)
    )
