"""Exposure store benchmark: ingest rate into DuckDB, and the guardrail query at scale.

Run: ``python -m benchmarks.exposures_bench`` (about 3 minutes on 2 cores; ``--quick`` uses
a tenth of the rows). Measures:

* **Ingest**: `ExposureStore.ingest` of upload batches of 5,000 impressions (the sidecar's
  batch size), each batch validated, appended and committed (fsync'd) on its own, as the
  collector does before answering. Baseline in the same round: DuckDB's own bulk insert of
  the same rows, already built as tuples, through one appender in one transaction into a
  table of the same shape (the ceiling for this path). Fresh files every round, the two
  interleaved, medians over the rounds.
* **Guardrail query**: `unit_statistics` for a conversion, a count and a mean metric, and
  `exposure_counts`, over 10 million exposures of one flag (2 million keys, 5 exposures
  each, 1 % of the keys moved to the other treatment) and 10 million events of three types,
  generated inside DuckDB with SQL. The first query after reopening the file is reported
  apart (cold), then the median of the rounds. Baseline in the same run: the plain scan and
  aggregation of both tables that any such query needs (distinct keys per treatment, events
  per key and type), so the ratio is what attribution adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import mmh3
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.controlplane.exposures import (
    DAY_MS,
    HOUR_MS,
    ExposureStore,
    Metric,
    MetricKind,
)

BATCH = 5_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _batches(count: int) -> list[pb.UploadRequest]:
    batches = []
    for b in range(count):
        request = pb.UploadRequest(batch_id=f"bench-{b}", sidecar_id="pod-a")
        for i in range(BATCH):
            n = b * BATCH + i
            request.impressions.add(
                key=f"user-{n % 200_003}",
                flag=f"flag-{n % 17}",
                treatment="on" if n % 3 else "off",
                label="default rule",
                change_number=1_700_000_000_000 + n % 5,
                time_ms=T0 + n * 7,
            )
        batches.append(request)
    return batches


def _rows(request: pb.UploadRequest) -> list[tuple[Any, ...]]:
    return [
        (
            i.key,
            i.bucketing_key or None,
            i.flag,
            i.treatment,
            i.label or None,
            i.change_number,
            i.time_ms,
            request.sidecar_id,
            request.batch_id,
            mmh3.hash64(i.key)[0],
        )
        for i in request.impressions
    ]


def _fresh(directory: Path, name: str) -> Path:
    path = directory / f"{name}.duckdb"
    for leftover in (path, path.with_suffix(".duckdb.wal")):
        leftover.unlink(missing_ok=True)
    return path


def ingest_store(directory: Path, batches: list[pb.UploadRequest]) -> float:
    store = ExposureStore(_fresh(directory, "store"))
    try:
        started = time.perf_counter()
        for request in batches:
            store.ingest(request)
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    return len(batches) * BATCH / elapsed


def ingest_raw(directory: Path, rows: list[tuple[Any, ...]]) -> float:
    """DuckDB alone: prebuilt tuples, one appender, one transaction, same table shape."""
    path = _fresh(directory, "raw")
    ExposureStore(path).close()  # the same schema
    db = duckdb.connect(str(path))
    try:
        started = time.perf_counter()
        db.begin()
        with db.appender("exposures") as appender:
            appender.append_rows(rows)
        db.commit()
        elapsed = time.perf_counter() - started
    finally:
        db.close()
    return len(rows) / elapsed


def bench_ingest(directory: Path, batch_count: int, rounds: int) -> dict[str, float]:
    batches = _batches(batch_count)
    rows = [row for request in batches for row in _rows(request)]
    store_rates: list[float] = []
    raw_rates: list[float] = []
    for round_ in range(rounds):
        order = [("store", store_rates), ("raw", raw_rates)]
        for name, rates in order if round_ % 2 == 0 else order[::-1]:
            rate = (
                ingest_store(directory, batches) if name == "store" else ingest_raw(directory, rows)
            )
            rates.append(rate)
        print(
            f"  ingest round {round_ + 1}: store {store_rates[-1]:,.0f}/s, "
            f"raw {raw_rates[-1]:,.0f}/s"
        )
    return {
        "store": statistics.median(store_rates),
        "raw": statistics.median(raw_rates),
        "ratio": statistics.median(s / r for s, r in zip(store_rates, raw_rates, strict=True)),
    }


def generate(store: ExposureStore, exposures: int, events: int, long_keys: bool) -> None:
    """Writes the data set with SQL inside DuckDB (bypassing `ingest`, which is measured
    apart): `exposures` rows of flag `checkout` over 5 days, 5 per key; `events` rows of
    `error` (45 %), `latency` with a value (45 %) and `purchase` (10 %) over 6 days, for keys
    of which a fifth were never exposed. Keys are like `user-1234567` (12 bytes, which DuckDB
    inlines and compresses into integers when hashing), or with `long_keys` 36 bytes, the
    length of a UUID."""
    keys = exposures // 5
    pad = "lpad(%s::VARCHAR, 31, '0')" if long_keys else "%s::VARCHAR"
    # DuckDB's hash() stands in for the store's MurmurHash3 in key_hash: the queries only
    # need equal keys to have equal hashes.
    with store.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO exposures
            SELECT key, NULL, 'checkout',
                   -- 1 % of the keys move to the other treatment after day 3 (a dial change)
                   CASE WHEN (arm < 50) <> (moves AND time > {T0 + 3 * DAY_MS})
                        THEN 'on' ELSE 'off' END,
                   'default rule', 1, time, 'pod-' || i % 8, 'gen-' || i // {BATCH},
                   (hash(key) >> 1)::BIGINT
            FROM (
                SELECT i, 'user-' || {pad % f"(i % {keys})"} AS key,
                       hash(i % {keys}) % 100 AS arm, hash(i % {keys} + 1) % 100 = 7 AS moves,
                       {T0} + hash(i * 31) % {5 * DAY_MS} AS time
                FROM range({exposures}) t(i)
            )
            """
        )
        cursor.execute(
            f"""
            INSERT INTO events
            SELECT key, 'user',
                   CASE WHEN i % 20 < 9 THEN 'error' WHEN i % 20 < 18 THEN 'latency'
                        ELSE 'purchase' END,
                   CASE WHEN i % 20 BETWEEN 9 AND 17 THEN 20 + (hash(i * 7) % 500) / 10.0 END,
                   NULL, {T0} + hash(i * 13) % {6 * DAY_MS}, 'pod-' || i % 8,
                   'gen-' || i // {BATCH}, (hash(key) >> 1)::BIGINT
            FROM (
                SELECT i, 'user-' || {pad % f"(hash(i) % {keys * 5 // 4})"} AS key
                FROM range({events}) t(i)
            )
            """
        )
        cursor.execute("CHECKPOINT")


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def bench_query(
    directory: Path, exposures: int, events: int, rounds: int, long_keys: bool
) -> dict[str, Any]:
    path = _fresh(directory, "query")
    store = ExposureStore(path)
    started = time.perf_counter()
    generate(store, exposures, events, long_keys)
    generated = time.perf_counter() - started
    store.close()
    print(f"  generated {exposures:,} exposures and {events:,} events in {generated:.1f} s")

    store = ExposureStore(path)  # reopened: the first query is cold
    queries: dict[str, Callable[[], object]] = {
        "conversion (error)": lambda: store.unit_statistics(
            "checkout", Metric("error", MetricKind.CONVERSION)
        ),
        "count (error)": lambda: store.unit_statistics(
            "checkout", Metric("error", MetricKind.COUNT)
        ),
        "mean (latency)": lambda: store.unit_statistics(
            "checkout", Metric("latency", MetricKind.MEAN)
        ),
        "the three in one query (unit_statistics_many)": lambda: store.unit_statistics_many(
            "checkout",
            [Metric("error", k) for k in (MetricKind.CONVERSION, MetricKind.COUNT)]
            + [Metric("latency", MetricKind.MEAN)],
        ),
        "exposure_counts": lambda: store.exposure_counts("checkout"),
        "metric_series, hourly (error count)": lambda: store.metric_series(
            "checkout", Metric("error", MetricKind.COUNT), bucket_ms=HOUR_MS
        ),
    }

    def baseline() -> None:
        with store.cursor() as cursor:
            cursor.execute(
                "SELECT treatment, count(DISTINCT key_hash) FROM exposures "
                "WHERE flag = 'checkout' GROUP BY treatment"
            ).fetchall()
            cursor.execute(
                "SELECT count(*) FROM "
                "(SELECT key_hash, event_type, count(*) FROM events GROUP BY ALL)"
            ).fetchall()

    results: dict[str, Any] = {"generated_s": generated}
    cold = _timed(queries["conversion (error)"])
    results["cold conversion (error)"] = cold
    timings: dict[str, list[float]] = {name: [] for name in [*queries, "baseline scan"]}
    for _ in range(rounds):
        timings["baseline scan"].append(_timed(baseline))
        for name, query in queries.items():
            timings[name].append(_timed(query))
    for name, values in timings.items():
        results[name] = statistics.median(values)
    arms = store.unit_statistics("checkout", Metric("error", MetricKind.CONVERSION))
    counts = store.exposure_counts("checkout")
    results["arms"] = {t: (a.n, a.total, counts[t].switched) for t, a in arms.items()}
    store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows")
    parser.add_argument("--dir", type=Path, help="where the DuckDB files go (default: a temp dir)")
    parser.add_argument("--long-keys", action="store_true", help="36-byte keys (UUID length)")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        print(f"cores: {os.cpu_count()}, duckdb {duckdb.__version__}, load {os.getloadavg()}")
        if not args.skip_ingest:
            ingest = bench_ingest(directory, batch_count=60 // scale or 1, rounds=args.rounds)
            print(
                f"ingest: store {ingest['store']:,.0f} exposures/s (goal >= 100,000), "
                f"raw DuckDB appender {ingest['raw']:,.0f}/s, store/raw {ingest['ratio']:.2f}"
            )
        query = bench_query(
            directory,
            10_000_000 // scale,
            10_000_000 // scale,
            rounds=args.rounds,
            long_keys=args.long_keys,
        )
        print(f"arms (units, converted, switched): {query.pop('arms')}")
        for name, seconds in query.items():
            print(f"  {name:40} {seconds:8.3f} s")
        print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
