"""Metric and guardrail definitions and the decisions log, on SQLite and on a real PostgreSQL
server: what is stored comes back the same, bad input is refused with a clear message and
writes nothing, and decisions are stored once per id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.controlplane.decisions import DecisionLog, Kind, Look, decision
from sidecar.controlplane.definitions import (
    DefinitionError,
    Definitions,
    InUse,
    MetricDef,
    NotFound,
)
from sidecar.controlplane.statistics import Direction, MetricKind
from sidecar.controlplane.storedb import Database, SqliteDatabase
from tests import postgres

_PG_SKIP = postgres.skip_reason()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[postgres.Postgres]:
    if _PG_SKIP is not None:
        pytest.skip(_PG_SKIP)
    with postgres.postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database: Database = SqliteDatabase(tmp_path)
    else:
        from sidecar.controlplane.postgres import PostgresDatabase

        server = request.getfixturevalue("pg_server")
        name = f"defs_{abs(hash(str(tmp_path))) % 10**9}"
        database = PostgresDatabase(postgres.create_database(server, name))
    yield database
    database.close()


def errors() -> MetricDef:
    return MetricDef("errors", "error", MetricKind.CONVERSION, Direction.DECREASE, "5xx seen")


def test_metrics_round_trip_and_replace(db: Database) -> None:
    defs = Definitions(db)
    assert defs.put_metric(errors()) is True
    latency = MetricDef("latency", "latency", MetricKind.MEAN, Direction.DECREASE)
    assert defs.put_metric(latency) is True
    assert defs.metrics() == [errors(), latency]
    assert (
        defs.put_metric(MetricDef("latency", "lat", MetricKind.MEAN, Direction.INCREASE)) is False
    )
    assert defs.metric("latency").event_type == "lat"
    # A second Definitions on the same database (a replica) sees the same.
    assert Definitions(db).metric("errors") == errors()


def test_guardrails_with_webhooks_and_clear(db: Database) -> None:
    defs = Definitions(db)
    defs.put_metric(errors())
    first = defs.set_guardrail("checkout", "errors", 0.01, webhooks=["http://127.0.0.1:9/a"])
    again = defs.set_guardrail("checkout", "errors", 0.02, "control", ["https://hooks.example/b"])
    assert again.created_at == first.created_at  # replaced, not re-created
    (rule,) = defs.guardrails("checkout")
    assert (rule.max_regression, rule.baseline) == (0.02, "control")
    assert defs.webhooks("checkout") == ["http://127.0.0.1:9/a", "https://hooks.example/b"]
    assert list(defs.guarded_flags()) == ["checkout"]
    with pytest.raises(InUse, match="guards checkout"):
        defs.delete_metric("errors")
    assert defs.clear("checkout") == 1
    assert defs.guardrails() == [] and defs.webhooks("checkout") == []
    defs.delete_metric("errors")
    with pytest.raises(NotFound):
        defs.metric("errors")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"event": "error", "kind": "ratio", "direction": "decrease"}, "kind: conversion|count"),
        ({"event": "error", "kind": "count", "direction": "down"}, "direction: decrease|increase"),
        ({"event": "bad type!", "kind": "count", "direction": "decrease"}, "not an event type"),
        ({"kind": "count", "direction": "decrease"}, "event: None"),
        ([], "a metric is a JSON object"),
    ],
)
def test_bad_metrics_are_refused_with_the_reason(raw: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        MetricDef.parse("errors", raw)


def test_bad_guardrails_are_refused_and_nothing_is_written(db: Database) -> None:
    defs = Definitions(db)
    defs.put_metric(errors())
    with pytest.raises(NotFound, match="create it first"):
        defs.set_guardrail("checkout", "latency", 0.01)
    with pytest.raises(DefinitionError, match="max_regression"):
        defs.set_guardrail("checkout", "errors", -0.5)
    with pytest.raises(DefinitionError, match="max_regression"):
        defs.set_guardrail("checkout", "errors", float("nan"))
    with pytest.raises(DefinitionError, match="http:// or https://"):
        defs.set_guardrail("checkout", "errors", 0.01, webhooks=["file:///etc/passwd"])
    with pytest.raises(DefinitionError, match="metric name"):
        MetricDef.parse(
            "no spaces please", {"event": "e", "kind": "count", "direction": "increase"}
        )
    assert defs.guardrails() == []
    assert defs.webhooks("checkout") == []


def test_decisions_are_stored_once_per_id_and_read_oldest_first(db: Database) -> None:
    log = DecisionLog(db)
    kill = decision("f", Kind.KILL, "killed at version 4", "4", {"version": 4}, at=200.0)
    hold = decision("f", Kind.HOLD, "hold, on has 3 of 355 units", "3", at=100.0)
    assert log.record(kill) and log.record(hold)
    assert log.record(kill) is False  # a second replica, or the loop again
    assert [d.kind for d in log.for_flag("f")] == [Kind.HOLD, Kind.KILL]
    assert log.for_flag("f")[1].details == {"version": 4}
    assert (log.counts["kill"], log.counts["hold"], sum(log.counts.values())) == (1, 1, 2)
    assert log.look("f") is None
    log.put_look(Look("f", 5.0, "hold", "too little"))
    log.put_look(Look("f", 6.0, "healthy", "fine"))
    assert log.look("f") == Look("f", 6.0, "healthy", "fine")
