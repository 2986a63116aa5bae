"""The in-process mode's exposure batches: the sidecar's mode applied with its own code,
batches of at most BATCH_RECORDS records with ids kept across retries, a bounded queue whose
overflow is dropped oldest first and counted, and a mode change that seals the old mode's
records first."""

from __future__ import annotations

from fader._exposures import BATCH_RECORDS, ExposureBuffer
from fader.impressions import HOUR_MS
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot

from tests.fader.rules.builders import flag, snapshot_doc

T = 1_700_000_000_000 // HOUR_MS * HOUR_MS
ON = Decision("on", "rule", None, 7)
SNAP = build_snapshot(snapshot_doc(flag("f"), flag("quiet", impressionsDisabled=True), version=3))


def test_optimized_mode_sends_first_impressions_and_counts_repeats() -> None:
    buffer = ExposureBuffer("host:1")
    buffer.set_mode("optimized", 100)
    lookups = [("u1", None, "f", ON), ("u1", None, "f", ON), ("u2", "b", "f", ON)]
    buffer.process([(SNAP, T + 5, lookups), (SNAP, T + 6, [("u3", None, "quiet", ON)])])
    buffer.seal()
    (request,) = buffer.queue
    assert [
        (i.key, i.bucketing_key, i.time_ms, i.snapshot_version) for i in request.impressions
    ] == [
        ("u1", "", T + 5, 3),
        ("u2", "b", T + 5, 3),
    ]
    assert sorted((c.flag, c.hour_ms, c.count) for c in request.counts) == [
        ("f", T, 1),
        ("quiet", T, 1),
    ]
    assert [(u.flag, list(u.keys)) for u in request.unique_keys] == [("quiet", ["u3"])]
    assert request.client_id == "host:1" and len(request.batch_id) == 32
    assert buffer.queued_records == 5
    buffer.sent(request)
    assert (buffer.queued_records, buffer.sent_records, len(buffer.queue)) == (0, 5, 0)
    buffer.seal()
    assert not buffer.queue  # nothing new: no empty batch


def test_batches_are_cut_and_the_queue_drops_its_oldest_beyond_its_bound() -> None:
    buffer = ExposureBuffer("c", max_records=2 * BATCH_RECORDS)
    buffer.set_mode("debug", 100_000)
    made = BATCH_RECORDS * 5 // 2
    buffer.process([(SNAP, T, [(f"k{i}", None, "f", ON) for i in range(made)])])
    buffer.seal()
    assert [len(r.impressions) for r in buffer.queue] == [BATCH_RECORDS, BATCH_RECORDS // 2]
    assert buffer.dropped_records == BATCH_RECORDS  # the first batch: the oldest
    assert buffer.queue[0].impressions[0].key == f"k{BATCH_RECORDS}"
    ids = [r.batch_id for r in buffer.queue]
    buffer.refused(buffer.queue[0])
    assert buffer.dropped_records == 2 * BATCH_RECORDS and buffer.queue[0].batch_id == ids[1]


def test_a_mode_change_seals_first_and_no_mode_records_nothing() -> None:
    buffer = ExposureBuffer("c")
    buffer.set_mode("none", 100)
    buffer.process([(SNAP, T, [("u1", None, "f", ON)])])
    buffer.set_mode("debug", 100)  # what "none" gathered is sealed as "none" made it
    (sealed,) = buffer.queue
    assert [(c.flag, c.count) for c in sealed.counts] == [("f", 1)] and not sealed.impressions
    buffer.set_mode("", 0)
    buffer.process([(SNAP, T, [("u2", None, "f", ON)])])
    buffer.seal()
    assert len(buffer.queue) == 1 and buffer.mode == ""
