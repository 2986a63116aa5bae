"""Clients' exposures into the telemetry pipeline: checked whole, added once per batch id,
refused with QueueFull (and not remembered) when there is no room, dropped without one."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from fader._modes import encode_impressions
from fader.impressions import Impression, Mode

from sidecar.core.exposures import ClientBatch, Exposures, check_batch
from sidecar.core.refusals import BadRequest, QueueFull
from sidecar.telemetry.batches import IMPRESSIONS_FIELD, CountRow, UniqueRow
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import Uploader
from tests.integration.harness import free_port

T = 1_700_000_000_000


def impression(key: str, flag: str = "f") -> Impression:
    return Impression(key, None, flag, "on", "rule", 7, T, None, 3)


def batch(
    batch_id: str,
    impressions: list[Impression],
    counts: list[CountRow] | None = None,
    unique_keys: list[UniqueRow] | None = None,
    problem: str | None = None,
) -> ClientBatch:
    """A batch as RecordExposures hands it over: impressions as upload entries."""
    entries = encode_impressions(impressions, IMPRESSIONS_FIELD)
    return ClientBatch(
        batch_id, entries, len(impressions), counts or [], unique_keys or [], problem
    )


def pipeline(**settings: object) -> Pipeline:
    base = PipelineSettings(mode=Mode.DEBUG, batch_records=10)
    fields = {**base.__dict__, **settings}
    return Pipeline(PipelineSettings(**fields), Uploader(f"127.0.0.1:{free_port()}", 1.0))


def test_a_malformed_batch_is_refused_whole_naming_the_record() -> None:
    """The batch id first, then the number of records, then the first bad impression (found
    where the request was read: tests/plumbing/test_batchwire.py), counts, unique keys."""
    ok = [impression("a")]
    bad_key = "impressions[0].key: must not be empty"
    cases = [
        (batch("", ok, problem=bad_key), r"^batch_id: 1 to 128 characters$"),
        (batch("b", ok * 11, problem=bad_key), r"^11 records in one batch, at most 10 allowed$"),
        (batch("b", ok, [("f", T, 0)], problem=bad_key), rf"^{re.escape(bad_key)}$"),
        (batch("b", ok, [("f", T, 0)]), r"^counts\[0\]: hour_ms must not be negative, count"),
        (
            batch("b", ok, [], [("f", ["k", ""])]),
            r"^unique_keys\[0\]\.keys\[1\]: must not be empty$",
        ),
        (batch("b", ok * 3, [], [("f", ["k"] * 8)]), r"^11 records in one batch, at most 10"),
    ]
    for refused, message in cases:
        with pytest.raises(BadRequest, match=message):
            check_batch(refused, 10)
    check_batch(batch("b", ok * 3, [("f", T, 1)], [("f", ["k"] * 6)]), 10)  # 10: allowed


def test_a_batch_is_added_once_and_counted() -> None:
    async def scenario() -> None:
        pipe = pipeline()
        exposures = Exposures(pipe, max_records=100)
        assert (exposures.mode, exposures.observer_size) == ("debug", 100_000)
        rows = batch(
            "b1", [impression(f"k{i}") for i in range(3)], [("f", T, 4)], [("g", ["x", "y"])]
        )
        assert not exposures.put(rows)
        assert exposures.put(rows)  # a retry
        assert pipe.stats.queued == {"impressions": 3, "counts": 1, "unique_keys": 2}
        await pipe.close(0)

    asyncio.run(scenario())


def test_no_room_refuses_and_does_not_remember_the_batch() -> None:
    async def scenario() -> None:
        pipe = pipeline(memory_bytes=300)  # no spool: a full memory drops and fills up
        exposures = Exposures(pipe, max_records=100)
        exposures.put(batch("b1", [impression(f"k{i:03d}") for i in range(10)]))
        exposures.put(batch("b2", [impression(f"k{i:03d}") for i in range(10)]))
        assert pipe.saturated()
        for _ in range(2):  # not remembered: its retry is refused again, not a "duplicate"
            with pytest.raises(QueueFull, match="no room for exposures"):
                exposures.put(batch("b3", [impression("late")]))
        assert pipe.stats.queued["impressions"] == 20
        await pipe.close(0)

    asyncio.run(scenario())


def test_without_a_pipeline_batches_are_taken_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    exposures = Exposures(None, max_records=100)
    assert (exposures.mode, exposures.observer_size) == ("", 0)
    assert not exposures.put(batch("b1", [impression("a")]))
    assert exposures.put(batch("b1", [impression("a")]))
    exposures.put(batch("b2", [impression("a")]))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "client exposures are dropped" in warnings[0].getMessage()
