"""The exposure store on real DuckDB files: ingest and its idempotency across a reopen, the
attribution rules of the guardrail query (checked by hand and against a plain-Python model on
random data), the series, the Parquet export, and the collector writing into the store over
real gRPC."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import duckdb
import grpc
import pytest
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

from sidecar.controlplane.collector import Collector, Outputs
from sidecar.controlplane.exposures import (
    DAY_MS,
    HOUR_MS,
    NOT_RANDOMISED_LABELS,
    ExposureStore,
    InvalidBatch,
    Metric,
    MetricKind,
    Multiple,
    StoreError,
    UnitStats,
)

T0 = 1_700_000_000_000 // HOUR_MS * HOUR_MS  # an hour boundary in November 2023
MINUTE = 60_000


@dataclass(frozen=True)
class Exp:
    key: str
    treatment: str
    time: int
    flag: str = "f"
    label: str = "default rule"


@dataclass(frozen=True)
class Ev:
    key: str
    time: int
    value: float | None = None
    event_type: str = "error"


def upload(
    batch_id: str, exposures: Sequence[Exp] = (), events: Sequence[Ev] = ()
) -> pb.UploadRequest:
    request = pb.UploadRequest(batch_id=batch_id, sidecar_id="pod-a", impressions_mode="optimized")
    for x in exposures:
        request.impressions.add(
            key=x.key,
            flag=x.flag,
            treatment=x.treatment,
            label=x.label,
            change_number=7,
            time_ms=x.time,
        )
    for e in events:
        event = request.events.add(
            key=e.key, traffic_type="user", event_type=e.event_type, timestamp_ms=e.time
        )
        if e.value is not None:
            event.value = e.value
    return request


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ExposureStore]:
    opened = ExposureStore(tmp_path / "data" / "exposures.duckdb")
    yield opened
    opened.close()


def stats(
    store: ExposureStore, kind: MetricKind, **options: object
) -> dict[str, tuple[int, float, float]]:
    found = store.unit_statistics("f", Metric("error", kind), **options)  # type: ignore[arg-type]
    return {t: (s.n, s.total, s.total_squares) for t, s in found.items()}


# -- ingest ------------------------------------------------------------------------------


def test_ingest_stores_every_field(store: ExposureStore) -> None:
    request = pb.UploadRequest(batch_id="b1", sidecar_id="pod-a")
    request.impressions.add(
        key="u1", bucketing_key="acct", flag="f", treatment="on", label="in segment beta",
        change_number=42, time_ms=T0 + 1,
    )  # fmt: skip
    request.impressions.add(key="u2", flag="f", treatment="off", time_ms=T0 + 2)
    event = request.events.add(
        key="u1", traffic_type="user", event_type="buy", properties_json='{"sku": "x"}',
        timestamp_ms=T0 + 3,
    )  # fmt: skip
    event.value = 9.5
    request.events.add(key="u2", traffic_type="account", event_type="view", timestamp_ms=T0 + 4)

    assert store.ingest(request) is True

    with store.cursor() as cursor:
        assert cursor.execute(
            "SELECT * EXCLUDE (key_hash) FROM exposures ORDER BY time"
        ).fetchall() == [
            ("u1", "acct", "f", "on", "in segment beta", 42, T0 + 1, "pod-a", "b1"),
            ("u2", None, "f", "off", None, 0, T0 + 2, "pod-a", "b1"),
        ]
        rows = cursor.execute(
            "SELECT key, traffic_type, event_type, value, properties->>'sku', time, sidecar_id, "
            "batch_id FROM events ORDER BY time"
        ).fetchall()
        hashes = cursor.execute(
            "SELECT key, key_hash FROM exposures UNION ALL SELECT key, key_hash FROM events"
        ).fetchall()
        assert rows == [
            ("u1", "user", "buy", 9.5, "x", T0 + 3, "pod-a", "b1"),
            ("u2", "account", "view", None, None, T0 + 4, "pod-a", "b1"),
        ]
        assert cursor.execute("SELECT batch_id, exposures, events FROM batches").fetchall() == [
            ("b1", 2, 2)
        ]
    # One hash per key, the same in both tables, different for different keys.
    assert len(set(hashes)) == 2
    assert len({key_hash for _, key_hash in hashes}) == 2
    assert store.ingested == {"batches": 1, "duplicates": 0, "exposures": 2, "events": 2}


def test_a_batch_is_stored_once_even_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "exposures.duckdb"
    batch = upload("b1", [Exp("u1", "on", T0)], [Ev("u1", T0 + 1)])
    first = ExposureStore(path)
    assert first.ingest(batch) is True
    assert first.ingest(batch) is False
    first.close()

    second = ExposureStore(path)
    try:
        assert second.ingest(batch) is False
        assert second.ingest(upload("b2", [Exp("u2", "off", T0)])) is True
        with second.cursor() as cursor:
            counts = cursor.execute(
                "SELECT (SELECT count(*) FROM exposures), (SELECT count(*) FROM events)"
            ).fetchone()
        assert counts == (2, 1)
        assert second.ingested["duplicates"] == 1
    finally:
        second.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: setattr(r.impressions[1], "key", ""), "impressions[1].key: must not be empty"),
        (lambda r: setattr(r.impressions[0], "flag", ""), "impressions[0].flag"),
        (lambda r: setattr(r.impressions[0], "time_ms", -5), "impressions[0].time_ms: -5"),
        (lambda r: setattr(r.events[0], "event_type", ""), "events[0].event_type"),
        (lambda r: setattr(r.events[0], "timestamp_ms", 10**17), "events[0].timestamp_ms"),
        (lambda r: setattr(r.events[0], "value", math.nan), "events[0].value: nan"),
        (lambda r: setattr(r.events[0], "properties_json", "[1]"), "not a JSON object"),
        (lambda r: setattr(r.events[0], "properties_json", "{bad"), "not a JSON object"),
        (lambda r: setattr(r, "batch_id", ""), "batch_id: must not be empty"),
    ],
)
def test_a_bad_record_refuses_the_whole_batch(store: ExposureStore, change, message) -> None:
    request = upload("b1", [Exp("u1", "on", T0), Exp("u2", "on", T0)], [Ev("u1", T0)])
    change(request)
    with pytest.raises(InvalidBatch, match=message.replace("[", r"\[").replace("]", r"\]")):
        store.ingest(request)
    with store.cursor() as cursor:
        assert cursor.execute(
            "SELECT (SELECT count(*) FROM exposures) + (SELECT count(*) FROM events) "
            "+ (SELECT count(*) FROM batches)"
        ).fetchone() == (0,)


def test_a_closed_store_fails_with_a_store_error(tmp_path: Path) -> None:
    opened = ExposureStore(tmp_path / "exposures.duckdb")
    opened.close()
    with pytest.raises(StoreError, match="storing batch b1"):
        opened.ingest(upload("b1", [Exp("u1", "on", T0)]))


def test_readers_in_other_threads_see_committed_batches_while_the_writer_ingests(
    store: ExposureStore,
) -> None:
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                counts = store.exposure_counts("f")
                seen.append(sum(c.exposures for c in counts.values()))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for n in range(12):
        store.ingest(upload(f"b{n}", [Exp(f"u{n}-{i}", "on", T0 + n) for i in range(100)]))
    done.set()
    for reader in readers:
        reader.join()
    assert errors == []
    assert seen and all(count % 100 == 0 for count in seen)  # whole batches only
    assert store.exposure_counts("f")["on"].exposures == 1_200


# -- attribution -------------------------------------------------------------------------


def test_an_event_counts_from_the_first_exposure_until_the_window_ends(
    store: ExposureStore,
) -> None:
    window = 2 * HOUR_MS
    store.ingest(
        upload(
            "b1",
            [Exp("u1", "on", T0), Exp("u1", "on", T0 + HOUR_MS), Exp("u2", "off", T0)],
            [
                Ev("u1", T0 - 1),  # before the first exposure: not counted
                Ev("u1", T0),  # at the first exposure: counted
                Ev("u1", T0 + window - 1),  # last millisecond of the window: counted
                Ev("u1", T0 + window),  # the window is over (it ends at the first exposure,
                # not at the later one)
                Ev("u2", T0 + 3 * HOUR_MS),  # after u2's window: u2 did not convert
                Ev("u3", T0 + 1),  # u3 was never exposed
            ],
        )
    )
    assert stats(store, MetricKind.COUNT, window_ms=window) == {
        "off": (1, 0.0, 0.0),
        "on": (1, 2.0, 4.0),
    }
    assert stats(store, MetricKind.CONVERSION, window_ms=window) == {
        "off": (1, 0.0, 0.0),
        "on": (1, 1.0, 1.0),
    }
    # The default window (24 h) takes u1's event at T0 + 2 h and u2's at T0 + 3 h.
    assert stats(store, MetricKind.COUNT) == {"off": (1, 1.0, 1.0), "on": (1, 3.0, 9.0)}


def test_each_metric_kind(store: ExposureStore) -> None:
    store.ingest(
        upload(
            "b1",
            [Exp("a", "on", T0), Exp("b", "on", T0), Exp("c", "on", T0), Exp("d", "off", T0)],
            [
                Ev("a", T0 + 1, 100.0),
                Ev("a", T0 + 2, 300.0),
                Ev("a", T0 + 3),  # no value: counts, converts, has no latency
                Ev("b", T0 + 1),
                Ev("d", T0 + 5, 50.0),
                Ev("c", T0 + 1, 7.0, event_type="other"),  # another metric's event
            ],
        )
    )
    # conversion: a=1, b=1, c=0 | d=1
    assert stats(store, MetricKind.CONVERSION) == {"off": (1, 1.0, 1.0), "on": (3, 2.0, 2.0)}
    # count: a=3, b=1, c=0 | d=1
    assert stats(store, MetricKind.COUNT) == {"off": (1, 1.0, 1.0), "on": (3, 4.0, 10.0)}
    # mean: a=200 (b and c have no valued event and are no units of a mean) | d=50
    assert stats(store, MetricKind.MEAN) == {"off": (1, 50.0, 2500.0), "on": (1, 200.0, 40000.0)}
    other = store.unit_statistics("f", Metric("other", MetricKind.MEAN))
    assert other == {"off": UnitStats("off", 0, 0.0, 0.0), "on": UnitStats("on", 1, 7.0, 49.0)}
    assert other["on"].mean == 7.0 and other["off"].mean == 0.0


def test_a_key_moved_to_another_treatment_counts_for_its_first_until_it_moved(
    store: ExposureStore,
) -> None:
    store.ingest(
        upload(
            "b1",
            [
                Exp("mover", "off", T0),
                Exp("mover", "on", T0 + HOUR_MS),  # the dial moved its bucket
                Exp("mover", "off", T0 + 2 * HOUR_MS),
                Exp("stay", "on", T0),
            ],
            [
                Ev("mover", T0 + 10),  # while in off: counts for off
                Ev("mover", T0 + HOUR_MS),  # caused by on: counted nowhere
                Ev("mover", T0 + 3 * HOUR_MS),
                Ev("stay", T0 + 10),
            ],
        )
    )
    assert stats(store, MetricKind.COUNT) == {"off": (1, 1.0, 1.0), "on": (1, 1.0, 1.0)}
    assert stats(store, MetricKind.COUNT, multiple=Multiple.EXCLUDE) == {"on": (1, 1.0, 1.0)}
    counts = store.exposure_counts("f")
    assert (counts["off"].units, counts["off"].switched, counts["off"].exposures) == (1, 1, 2)
    assert (counts["on"].units, counts["on"].switched, counts["on"].exposures) == (1, 0, 2)
    excluded = store.exposure_counts("f", multiple=Multiple.EXCLUDE)
    assert (excluded["off"].units, excluded["off"].exposures) == (0, 2)


def test_exposures_of_a_killed_flag_are_not_part_of_the_analysis(store: ExposureStore) -> None:
    store.ingest(
        upload(
            "b1",
            [
                Exp("u1", "on", T0),
                Exp("u1", "off", T0 + HOUR_MS, label="killed"),
                Exp("u2", "off", T0 + HOUR_MS, label="killed"),
                Exp("u3", "off", T0, label="not in split"),
            ],
            [Ev("u1", T0 + 2 * HOUR_MS), Ev("u2", T0 + 2 * HOUR_MS)],
        )
    )
    # u1 stays in on (the kill is no move to off); u2 and u3 were never randomised.
    assert stats(store, MetricKind.COUNT) == {"on": (1, 1.0, 1.0)}
    with_all = stats(store, MetricKind.COUNT, ignore_labels=())
    assert with_all == {"off": (2, 1.0, 1.0), "on": (1, 0.0, 0.0)}
    assert "killed" in NOT_RANDOMISED_LABELS


def test_start_and_end_bound_the_analysis(store: ExposureStore) -> None:
    store.ingest(
        upload(
            "b1",
            [Exp("old", "on", T0 - DAY_MS), Exp("u1", "on", T0), Exp("late", "on", T0 + DAY_MS)],
            [Ev("old", T0 - DAY_MS + 1), Ev("u1", T0 + 1), Ev("u1", T0 + HOUR_MS)],
        )
    )
    assert stats(store, MetricKind.COUNT, start_ms=T0, end_ms=T0 + HOUR_MS) == {"on": (1, 1.0, 1.0)}
    assert stats(store, MetricKind.COUNT, start_ms=T0) == {"on": (2, 2.0, 4.0)}
    assert store.unit_statistics("g", Metric("error", MetricKind.COUNT)) == {}
    with pytest.raises(ValueError, match="must come before"):
        store.unit_statistics("f", Metric("error", MetricKind.COUNT), start_ms=5, end_ms=5)
    with pytest.raises(ValueError, match="window_ms=0"):
        store.unit_statistics("f", Metric("error", MetricKind.COUNT), window_ms=0)


def test_another_flag_s_exposures_do_not_mix_in(store: ExposureStore) -> None:
    store.ingest(
        upload(
            "b1",
            [Exp("u1", "on", T0), Exp("u1", "off", T0 - 5, flag="g"), Exp("u2", "a", T0, "g")],
            [Ev("u1", T0 + 1)],
        )
    )
    assert stats(store, MetricKind.COUNT) == {"on": (1, 1.0, 1.0)}
    assert store.exposure_counts("g")["off"].units == 1


# -- against a plain-Python model on random data -------------------------------------------


def model(
    exposures: list[Exp],
    events: list[Ev],
    kind: MetricKind,
    window: int,
    multiple: Multiple,
    end: int,
) -> dict[str, tuple[int, float, float]]:
    """The attribution rules written out the slow, obvious way."""
    seen: dict[str, list[tuple[int, str]]] = {}
    for x in exposures:
        if x.flag == "f" and x.label not in NOT_RANDOMISED_LABELS and x.time < end:
            seen.setdefault(x.key, []).append((x.time, x.treatment))
    arms: dict[str, list[float]] = {}
    for key, looks in seen.items():
        first_time, treatment = min(looks)
        others = [t for t, tr in looks if tr != treatment]
        if others and multiple is Multiple.EXCLUDE:
            continue
        until = min([first_time + window, end, *others])
        mine = [e for e in events if e.key == key and e.event_type == "error"]
        mine = [e for e in mine if first_time <= e.time < until]
        arm = arms.setdefault(treatment, [])  # an arm with units, even with no mean values
        values = [e.value for e in mine if e.value is not None]
        if kind is MetricKind.CONVERSION:
            arm.append(1.0 if mine else 0.0)
        elif kind is MetricKind.COUNT:
            arm.append(float(len(mine)))
        elif values:
            arm.append(sum(values) / len(values))
    return {t: (len(v), sum(v), sum(x * x for x in v)) for t, v in arms.items()}


def random_data(seed: int) -> tuple[list[Exp], list[Ev]]:
    rng = random.Random(seed)
    exposures, events = [], []
    for k in range(150):
        key = f"user-{k}"
        for _ in range(rng.randint(1, 4)):
            exposures.append(
                Exp(
                    key,
                    rng.choice(["off", "on", "on", "v2"]) if rng.random() < 0.3 else "on",
                    T0 + rng.randrange(3 * DAY_MS),
                    flag=rng.choice(["f", "f", "f", "g"]),
                    label=rng.choice(["default rule"] * 8 + ["killed", "in segment x"]),
                )
            )
        for _ in range(rng.randint(0, 6)):
            events.append(
                Ev(
                    key,
                    T0 + rng.randrange(-DAY_MS, 5 * DAY_MS),
                    rng.choice([None, round(rng.uniform(0, 500), 3)]),
                    rng.choice(["error", "error", "other"]),
                )
            )
    return exposures, events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_query_agrees_with_the_model_on_random_data(store: ExposureStore, seed: int) -> None:
    exposures, events = random_data(seed)
    store.ingest(upload("b1", exposures[: len(exposures) // 2], events[: len(events) // 2]))
    store.ingest(upload("b2", exposures[len(exposures) // 2 :], events[len(events) // 2 :]))
    for kind in MetricKind:
        for multiple in Multiple:
            for window, end in ((DAY_MS, None), (6 * HOUR_MS, T0 + 2 * DAY_MS)):
                found = stats(store, kind, window_ms=window, multiple=multiple, end_ms=end)
                expected = model(
                    exposures, events, kind, window, multiple, end or T0 + 100 * DAY_MS
                )
                assert found.keys() == expected.keys()
                for treatment, (n, total, squares) in expected.items():
                    assert found[treatment][0] == n, (kind, multiple, treatment)
                    assert found[treatment][1] == pytest.approx(total)
                    assert found[treatment][2] == pytest.approx(squares)


def test_several_metrics_in_one_query_equal_one_query_each(store: ExposureStore) -> None:
    exposures, events = random_data(5)
    store.ingest(upload("b1", exposures, events))
    metrics = [
        Metric("error", MetricKind.CONVERSION),
        Metric("error", MetricKind.MEAN),
        Metric("other", MetricKind.COUNT),
        Metric("error", MetricKind.CONVERSION),  # asked twice: answered once
        Metric("never-sent", MetricKind.COUNT),
    ]
    together = store.unit_statistics_many("f", metrics, window_ms=6 * HOUR_MS)
    assert list(together) == metrics[:3] + metrics[4:]
    for metric, arms in together.items():
        assert arms == store.unit_statistics("f", metric, window_ms=6 * HOUR_MS)
    assert all(arm.total == 0 for arm in together[metrics[4]].values())
    assert together[metrics[4]]["on"].n > 0
    assert store.unit_statistics_many("f", []) == {}


# -- series ------------------------------------------------------------------------------


def test_exposure_series_counts_new_and_cumulative_units_per_bucket(store: ExposureStore) -> None:
    store.ingest(
        upload(
            "b1",
            [
                Exp("a", "on", T0 + 5),
                Exp("b", "off", T0 + 10),
                Exp("a", "on", T0 + HOUR_MS),  # seen again: not new
                Exp("c", "on", T0 + 3 * HOUR_MS + 1),
            ],
        )
    )
    series = store.exposure_series("f")
    assert [(p.start_ms - T0, p.treatment, p.units, p.cumulative_units) for p in series] == [
        (0, "off", 1, 1),
        (0, "on", 1, 1),
        (HOUR_MS, "off", 0, 1),
        (HOUR_MS, "on", 0, 1),
        (2 * HOUR_MS, "off", 0, 1),
        (2 * HOUR_MS, "on", 0, 1),
        (3 * HOUR_MS, "off", 0, 1),
        (3 * HOUR_MS, "on", 1, 2),
    ]
    # From T0 + 1 h on, b is not exposed and a's first exposure is the one at T0 + 1 h.
    quarter = store.exposure_series("f", bucket_ms=15 * MINUTE, start_ms=T0 + HOUR_MS)
    assert [(p.start_ms - T0, p.units, p.cumulative_units) for p in quarter] == [
        (HOUR_MS + n * 15 * MINUTE, int(n in (0, 8)), 1 + int(n == 8)) for n in range(9)
    ]
    assert {p.treatment for p in quarter} == {"on"}
    assert store.exposure_series("nothing") == []
    with pytest.raises(ValueError, match="more than"):
        store.exposure_series("f", bucket_ms=1)


@pytest.mark.parametrize("kind", list(MetricKind))
def test_every_metric_point_equals_the_query_as_of_its_end(
    store: ExposureStore, kind: MetricKind
) -> None:
    exposures, events = random_data(7)
    store.ingest(upload("b1", exposures, events))
    metric = Metric("error", kind)
    series = store.metric_series("f", metric, bucket_ms=6 * HOUR_MS)
    ends = sorted({p.end_ms for p in series})
    assert ends == list(range(ends[0], ends[-1] + 1, 6 * HOUR_MS))  # no gap
    for point in series:
        expected = store.unit_statistics("f", metric, end_ms=point.end_ms).get(point.treatment)
        n, total, squares = (
            (expected.n, expected.total, expected.total_squares) if expected else (0, 0, 0)
        )
        assert point.n == n, point
        assert point.total == pytest.approx(total), point
        assert point.total_squares == pytest.approx(squares), point
    final = store.unit_statistics("f", metric)
    last = {p.treatment: p for p in series if p.end_ms == ends[-1]}
    for treatment, arm in final.items():
        assert last[treatment].n == arm.n
        assert last[treatment].total == pytest.approx(arm.total)


# -- Parquet export ------------------------------------------------------------------------


def read_parquet(root: Path, table: str) -> list[tuple[object, ...]]:
    """The rows of every partition, time back in epoch ms, the partition's date and hour last."""
    with duckdb.connect() as db:
        return db.execute(
            f"SELECT * EXCLUDE (date, hour) REPLACE (epoch_ms(time) AS time), date, hour "
            f"FROM read_parquet('{root}/{table}/*/*/*.parquet', hive_partitioning = true, "
            f"hive_types_autocast = false) ORDER BY time, key"
        ).fetchall()


def test_export_writes_hourly_partitions_readable_back(
    store: ExposureStore, tmp_path: Path
) -> None:
    store.ingest(
        upload(
            "b1",
            [Exp("u1", "on", T0 + 1), Exp("u2", "off", T0 + HOUR_MS + 2)],
            [Ev("u1", T0 + 3, 1.5)],
        )
    )
    store.ingest(upload("b2", [Exp("u3", "on", T0 + 2 * HOUR_MS)]))  # the current hour
    out = tmp_path / "export"
    written = store.export_parquet(out, now_ms=T0 + 2 * HOUR_MS + 10)
    day = "date=2023-11-14"
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        f"events/{day}/hour=22/data.parquet",
        f"exposures/{day}/hour=22/data.parquet",
        f"exposures/{day}/hour=23/data.parquet",
    ]
    rows = read_parquet(out, "exposures")
    assert rows == [
        ("u1", None, "f", "on", "default rule", 7, T0 + 1, "pod-a", "b1", "2023-11-14", "22"),
        (
            "u2",
            None,
            "f",
            "off",
            "default rule",
            7,
            T0 + HOUR_MS + 2,
            "pod-a",
            "b1",
            "2023-11-14",
            "23",
        ),
    ]
    with duckdb.connect() as db:
        types = dict(
            db.execute(
                f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{written[0]}')"
            ).fetchall()
        )
    assert types["time"] == "TIMESTAMP WITH TIME ZONE"
    events = read_parquet(out, "events")
    assert [(e[0], e[2], e[3]) for e in events] == [("u1", "error", 1.5)]

    # Again: nothing new. A late batch for hour 22 rewrites that hour only.
    assert store.export_parquet(out, now_ms=T0 + 2 * HOUR_MS + 10) == []
    store.ingest(upload("b3", [Exp("late", "on", T0 + 30 * MINUTE)]))
    rewritten = store.export_parquet(out, now_ms=T0 + 2 * HOUR_MS + 10)
    assert [p.relative_to(out).as_posix() for p in rewritten] == [
        f"exposures/{day}/hour=22/data.parquet"
    ]
    assert [r[0] for r in read_parquet(out, "exposures")] == ["u1", "late", "u2"]
    # Later, the hour that was current is complete and goes out too.
    later = store.export_parquet(out, now_ms=T0 + 3 * HOUR_MS)
    assert [p.relative_to(out).as_posix() for p in later] == [
        "exposures/date=2023-11-15/hour=00/data.parquet"
    ]
    assert not list(out.rglob("*.tmp"))


def test_export_hour_rewrites_one_hour_on_demand(store: ExposureStore, tmp_path: Path) -> None:
    store.ingest(upload("b1", [Exp("u1", "on", T0 + 1)]))
    out = tmp_path / "export"
    first = store.export_hour(out, T0)
    again = store.export_hour(out, T0)
    assert first == again and len(first) == 1  # events had no rows that hour: no file
    assert [r[0] for r in read_parquet(out, "exposures")] == ["u1"]
    assert store.export_parquet(out, now_ms=T0 + DAY_MS) == []  # recorded as exported
    with pytest.raises(ValueError, match="not the start of an hour"):
        store.export_hour(out, T0 + 1)


# -- the collector writing into the store over gRPC ------------------------------------------


class Server:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(collector, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = telemetry_pb2_grpc.TelemetryServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0).wait()
        self.collector.close()


def jsonl_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["batch_id"] for line in path.read_text().splitlines()]


def stored(store: ExposureStore) -> tuple[int, int, int]:
    with store.cursor() as cursor:
        row = cursor.execute(
            "SELECT (SELECT count(*) FROM exposures), (SELECT count(*) FROM events), "
            "(SELECT count(*) FROM batches)"
        ).fetchone()
    assert row is not None
    return row


def a_batch(batch_id: str) -> pb.UploadRequest:
    request = upload(batch_id, [Exp("u1", "on", T0), Exp("u2", "off", T0)], [Ev("u1", T0 + 1)])
    request.counts.add(flag="f", hour_ms=T0, count=4)
    return request


def test_an_upload_lands_in_duckdb_before_the_answer(tmp_path: Path) -> None:
    store = ExposureStore(tmp_path / "exposures.duckdb")
    server = Server(Collector(Outputs(), store=store))
    try:
        assert server.stub.Upload(a_batch("b1")).duplicate is False
        assert stored(store) == (2, 1, 1)  # no wait: stored before the OK
        assert server.stub.Upload(a_batch("b1")).duplicate is True
        assert stored(store) == (2, 1, 1)
        assert stats(store, MetricKind.CONVERSION) == {"off": (1, 0.0, 0.0), "on": (1, 1.0, 1.0)}
        status = server.collector.status()
        assert status["discarded"] == {"counts": 1}  # the store keeps no counts
        assert status["batches"] == 1 and status["duplicates"] == 1
        assert status["store"] == {"batches": 1, "duplicates": 1, "exposures": 2, "events": 1}
    finally:
        server.close()
        store.close()
    # After a restart the store still knows the batch.
    store = ExposureStore(tmp_path / "exposures.duckdb")
    server = Server(Collector(Outputs(), store=store))
    try:
        assert server.stub.Upload(a_batch("b1")).duplicate is True
        assert stored(store) == (2, 1, 1)
    finally:
        server.close()
        store.close()


def test_with_files_and_store_each_sink_gets_each_batch_once(tmp_path: Path) -> None:
    out = Outputs(impressions=tmp_path / "impressions.jsonl", events=tmp_path / "events.jsonl")
    # b0 reached the files earlier (e.g. before the store was configured).
    earlier = Server(Collector(out))
    earlier.stub.Upload(a_batch("b0"))
    earlier.close()
    store = ExposureStore(tmp_path / "exposures.duckdb")
    server = Server(Collector(out, store=store))
    try:
        assert server.stub.Upload(a_batch("b0")).duplicate is False  # new to the store
        assert server.stub.Upload(a_batch("b1")).duplicate is False
        assert server.stub.Upload(a_batch("b1")).duplicate is True
        assert jsonl_ids(tmp_path / "impressions.jsonl") == ["b0", "b0", "b1", "b1"]
        assert stored(store) == (4, 2, 2)
        # b0's counts were dealt with when the files took b0; b1's have no file.
        assert server.collector.status()["discarded"] == {"counts": 1}
    finally:
        server.close()
        store.close()


def test_a_bad_batch_is_refused_and_written_nowhere(tmp_path: Path) -> None:
    out = Outputs(impressions=tmp_path / "impressions.jsonl")
    store = ExposureStore(tmp_path / "exposures.duckdb")
    server = Server(Collector(out, store=store))
    try:
        request = a_batch("b1")
        request.events[0].properties_json = "not json"
        with pytest.raises(grpc.RpcError) as err:
            server.stub.Upload(request)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "events[0].properties_json" in (err.value.details() or "")
        assert stored(store) == (0, 0, 0)
        assert jsonl_ids(tmp_path / "impressions.jsonl") == []
    finally:
        server.close()
        store.close()


def test_a_store_failure_is_retryable_and_the_retry_completes_the_batch(tmp_path: Path) -> None:
    out = Outputs(impressions=tmp_path / "impressions.jsonl")
    broken = ExposureStore(tmp_path / "exposures.duckdb")
    broken.close()  # every write now fails inside DuckDB
    server = Server(Collector(out, store=broken))
    try:
        with pytest.raises(grpc.RpcError) as err:
            server.stub.Upload(a_batch("b1"))
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert jsonl_ids(tmp_path / "impressions.jsonl") == []  # the files did not take it
    finally:
        server.close()
    store = ExposureStore(tmp_path / "exposures.duckdb")
    server = Server(Collector(out, store=store))
    try:
        assert server.stub.Upload(a_batch("b1")).duplicate is False  # the sidecar's retry
        assert stored(store) == (2, 1, 1)
        assert jsonl_ids(tmp_path / "impressions.jsonl") == ["b1", "b1"]
    finally:
        server.close()
        store.close()


def test_the_documented_duckdb_query_over_the_export_agrees_with_the_store(
    store: ExposureStore, tmp_path: Path
) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "exposures.md").read_text()
    sql = doc.split("### DuckDB", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    exposures, events = random_data(11)
    # The documented query keeps a key that switched in its first treatment for its whole
    # window: compare on keys with one treatment.
    first: dict[str, str] = {}
    exposures = [x for x in exposures if first.setdefault(x.key, x.treatment) == x.treatment]
    events = [Ev(e.key, e.time, e.value, "error") for e in events]
    store.ingest(upload("b1", exposures, events))
    out = tmp_path / "export"
    store.export_parquet(out, now_ms=T0 + 100 * DAY_MS)
    with duckdb.connect() as db:
        db.execute(sql.replace("DIR", str(out)).replace("'checkout'", "'f'"))
        found = {t: (units, converted) for t, units, converted, _ in db.fetchall()}
    expected = store.unit_statistics("f", Metric("error", MetricKind.CONVERSION))
    assert found == {t: (s.n, int(s.total)) for t, s in expected.items()}
    assert sum(converted for _, converted in found.values()) > 10
