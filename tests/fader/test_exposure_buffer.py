"""The in-process mode's exposure batches: the sidecar's mode applied with its own code,
batches of at most BATCH_RECORDS records with ids kept across retries, written as the bytes
serializing the RecordExposuresRequest would give, a bounded queue whose overflow is dropped
oldest first and counted, and a mode change that seals the old mode's records first."""

from __future__ import annotations

from fader._exposures import BATCH_RECORDS, MAX_BATCH_RECORDS, Batch, ExposureBuffer, chunks
from fader.impressions import HOUR_MS, Answer, ImpressionModes, Mode, Pending, add_messages
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot

from tests.fader.rules.builders import flag, snapshot_doc

T = 1_700_000_000_000 // HOUR_MS * HOUR_MS
ON = Decision("on", "rule", None, 7)
SNAP = build_snapshot(snapshot_doc(flag("f"), flag("quiet", impressionsDisabled=True), version=3))


def message(batch: Batch) -> pb.RecordExposuresRequest:
    return pb.RecordExposuresRequest.FromString(batch.data)


def test_optimized_mode_sends_first_impressions_and_counts_repeats() -> None:
    buffer = ExposureBuffer("host:1")
    buffer.set_mode("optimized", 100, 0)
    lookups = [("u1", None, "f", ON), ("u1", None, "f", ON), ("u2", "b", "f", ON)]
    buffer.process([(SNAP, T + 5, lookups), (SNAP, T + 6, [("u3", None, "quiet", ON)])])
    buffer.seal()
    (batch,) = buffer.queue
    request = message(batch)
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
    assert buffer.queued_records == batch.records == 5
    buffer.sent(batch)
    assert (buffer.queued_records, buffer.sent_records, len(buffer.queue)) == (0, 5, 0)
    buffer.seal()
    assert not buffer.queue  # nothing new: no empty batch


def test_batches_are_cut_and_the_queue_drops_its_oldest_beyond_its_bound() -> None:
    buffer = ExposureBuffer("c", max_records=2 * BATCH_RECORDS)
    buffer.set_mode("debug", 100_000, 0)
    made = BATCH_RECORDS * 5 // 2
    buffer.process([(SNAP, T, [(f"k{i}", None, "f", ON) for i in range(made)])])
    buffer.seal()
    sent = [message(batch) for batch in buffer.queue]
    assert [len(r.impressions) for r in sent] == [BATCH_RECORDS, BATCH_RECORDS // 2]
    assert [batch.records for batch in buffer.queue] == [BATCH_RECORDS, BATCH_RECORDS // 2]
    assert buffer.dropped_records == BATCH_RECORDS  # the first batch: the oldest
    assert sent[0].impressions[0].key == f"k{BATCH_RECORDS}"
    assert sent[1].impressions[-1].key == f"k{made - 1}"
    buffer.refused(buffer.queue[0])
    assert buffer.dropped_records == 2 * BATCH_RECORDS
    assert message(buffer.queue[0]).batch_id == sent[1].batch_id


def test_a_mode_change_seals_first_and_no_mode_records_nothing() -> None:
    buffer = ExposureBuffer("c")
    buffer.set_mode("none", 100, 0)
    buffer.process([(SNAP, T, [("u1", None, "f", ON)])])
    buffer.set_mode("debug", 100, 0)  # what "none" gathered is sealed as "none" made it
    (sealed,) = [message(batch) for batch in buffer.queue]
    assert [(c.flag, c.count) for c in sealed.counts] == [("f", 1)] and not sealed.impressions
    buffer.set_mode("", 0, 0)
    buffer.process([(SNAP, T, [("u2", None, "f", ON)])])
    buffer.seal()
    assert len(buffer.queue) == 1 and buffer.mode == ""


def test_a_batch_is_byte_for_byte_the_message_the_impressions_make() -> None:
    """The batch's bytes against the message built the object way (`process_all`, then
    `add_messages`, then the counts and unique keys) from the same lookups in a second
    buffer's mode: a field out of order, a wrong tag or a lost entry changes the bytes."""
    lookups = [
        ("u1", None, "f", ON),
        ("u2", "acct", "f", Decision("off", None, None, 0)),
        ("u1", None, "f", ON),  # a repeat: debug sends it with its previous time
        ("u3", None, "quiet", ON),  # impressionsDisabled: counted, a unique key
    ]
    requests = [(SNAP, T + 1, lookups[:2]), (SNAP, T + 2, lookups[2:])]
    buffer = ExposureBuffer("host:1")
    buffer.set_mode("debug", 100, 0)
    buffer.process(requests)
    buffer.seal()
    (batch,) = buffer.queue
    modes = ImpressionModes(Mode.DEBUG, 100)
    expected = pb.RecordExposuresRequest(batch_id=message(batch).batch_id, client_id="host:1")
    add_messages(expected.impressions, modes.process_all(requests))
    for flag_name, hour, count in modes.take_counts():
        expected.counts.add(flag=flag_name, hour_ms=hour, count=count)
    for flag_name, keys in modes.unique_keys.take():
        expected.unique_keys.add(flag=flag_name, keys=keys)
    assert len(expected.impressions) == 3 and len(expected.unique_keys) == 1
    assert batch.data == expected.SerializeToString()
    assert batch.records == 5


def test_requests_are_cut_into_chunks_of_at_most_the_limit_in_order() -> None:
    lookups: list[Answer] = [(f"k{i}", None, "f", ON) for i in range(7)]
    requests: list[Pending] = [
        (SNAP, T, lookups[:3]),
        (SNAP, T + 1, []),
        (SNAP, T + 2, lookups[3:]),
    ]
    cut = list(chunks(requests, 3))
    assert [[(time_ms, [k for k, *_ in part]) for _, time_ms, part in c] for c in cut] == [
        [(T, ["k0", "k1", "k2"])],
        [(T + 2, ["k3", "k4", "k5"])],
        [(T + 2, ["k6"])],
    ]
    (whole,) = chunks(requests, 7)  # room for all: the requests as they were, empty ones left out
    assert whole == [requests[0], requests[2]] and whole[0][2] is requests[0][2]
    assert [sum(len(part) for *_, part in c) for c in chunks(requests, 5)] == [5, 2]


def test_lookups_beyond_a_batch_in_one_request_are_cut_across_batches() -> None:
    """One recorded request of more lookups than a batch holds (a lookup of every flag)
    still makes batches of at most BATCH_RECORDS impressions, none lost."""
    buffer = ExposureBuffer("c", max_records=10 * BATCH_RECORDS)
    buffer.set_mode("debug", 100_000, 0)
    made = BATCH_RECORDS + 7
    buffer.process([(SNAP, T, [(f"k{i}", None, "f", ON) for i in range(made)])])
    assert buffer.open_records() == made
    buffer.seal()
    sent = [message(batch) for batch in buffer.queue]
    assert [len(r.impressions) for r in sent] == [BATCH_RECORDS, 7]
    assert [i.key for r in sent for i in r.impressions] == [f"k{i}" for i in range(made)]


def test_batches_hold_no_more_records_than_the_sidecar_takes() -> None:
    """Impressions, counts and unique keys together: a batch never holds more records than
    the sidecar announced it takes in one call (it refuses more, and a refused batch is
    dropped), nor more than MAX_BATCH_RECORDS whatever it announced; none is lost."""
    buffer = ExposureBuffer("c")
    buffer.set_mode("debug", 100, 3)
    lookups: list[Answer] = [(f"k{i}", None, "f", ON) for i in range(5)]
    quiet: list[Answer] = [(f"q{i}", None, "quiet", ON) for i in range(4)]
    buffer.process([(SNAP, T, lookups), (SNAP, T, quiet)])
    buffer.seal()
    sent = [message(batch) for batch in buffer.queue]
    # 5 impressions, 1 count (4 repeats of one flag and hour), 4 unique keys: 10 records
    assert [batch.records for batch in buffer.queue] == [3, 3, 3, 1]
    assert [
        len(r.impressions) + len(r.counts) + sum(len(u.keys) for u in r.unique_keys) for r in sent
    ] == [3, 3, 3, 1]
    assert [i.key for r in sent for i in r.impressions] == [f"k{i}" for i in range(5)]
    assert sum(c.count for r in sent for c in r.counts) == 4
    assert sorted(k for r in sent for u in r.unique_keys for k in u.keys) == [
        "q0",
        "q1",
        "q2",
        "q3",
    ]
    buffer.set_mode("debug", 100, 0)  # not announced: the default
    assert buffer.batch_records == BATCH_RECORDS
    buffer.set_mode("debug", 100, 10**6)
    assert buffer.batch_records == MAX_BATCH_RECORDS
