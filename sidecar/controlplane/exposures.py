"""The exposure and event store: what sidecars upload, in an embedded DuckDB file, for guardrails.

Why DuckDB: the guardrail question ("per treatment, how did the keys exposed to a flag behave
afterwards?") is a join of every exposure with every event followed by aggregations, which a
columnar engine answers over tens of millions of rows in about a second, inside the control
plane's process, with nothing else to run. One file, `<data-dir>/exposures.duckdb`.

Tables (the column names are Split's impression fields, so the same shape is what
warehouse-native tools read from the Parquet export, see `docs/exposures.md`):

* `exposures(key, bucketing_key, flag, treatment, label, change_number, time, sidecar_id,
  batch_id, key_hash)`: one row per uploaded impression. `bucketing_key` and `label` are NULL
  when the sidecar sent them empty.
* `events(key, traffic_type, event_type, value, properties, time, sidecar_id, batch_id,
  key_hash)`: one row per `Track` event; `value` is NULL when the event had none,
  `properties` is JSON or NULL.
* `batches(batch_id, sidecar_id, stored_ms, exposures, events)`: every batch id stored, so an
  upload retried after a lost answer, or after a restart, is recognised and not stored twice.
* `exports(table_name, hour_ms, row_count)`: which hour was written to Parquet with how many
  rows, so an export is redone only for hours that received rows since.

`time` is BIGINT milliseconds since the Unix epoch (UTC), exactly the proto's `time_ms` and
Split's impression time: the ingest path appends it without conversion, window arithmetic is
integer arithmetic, and no time zone can slip in. The Parquet export writes it as a UTC
timestamp, which is what warehouses index.

`key_hash` is the first 64 bits of the key's MurmurHash3 (x64, 128 bits), computed at ingest.
The queries group and join on it instead of the key: they then never read a key string, and
their cost no longer depends on the keys' length (with strings, UUID-long keys cost much more
than short ones, see benchmarks/RESULTS.md). Two keys sharing a hash
would count as one unit; with 64 bits the chance that any two of ten million keys do is
about 3 in a million, and one merged unit among millions changes no statistic.

Attribution (the guardrail query, `unit_statistics`): the unit is the key. A key belongs to
the treatment of its *first* exposure to the flag; an event of the metric's type counts for
it when it comes at or after that first exposure and before `first + window` (default 24 h).
Exposures whose label says the key was not randomised (killed, not in split, definition not
found, exception, prerequisites not met) are left out: after a kill every key is served the
default with label `killed`, and counting those would move every exposed key into the
baseline. A key exposed to two treatments (a dial change moved its bucket) is handled by
`Multiple`: `first` (default) keeps it in its first treatment and counts its events only until
its first exposure to the other treatment, so no event caused by the second treatment is
credited to the first; `exclude` drops such keys (GrowthBook's choice), which keeps each arm
pure at the cost of losing the keys that came back after a change.

Metric kinds, per unit: `conversion` is 1 when the key sent at least one attributed event,
else 0; `count` is the number of attributed events (0 for none); `mean` is the mean `value` of
its attributed events that carry a value, and only keys with at least one such event are
units of a mean metric (a latency mean over the keys that made a request; the others have no
latency to average, and counting them as 0 would mix the metric with the request rate).

Threads: one writer (the collector) through `ingest`, serialised by a lock, each batch in one
transaction committed before `ingest` returns (DuckDB's write-ahead log is fsync'd at commit).
Readers (the guardrail loop, the release page, the export) each get their own cursor per call,
so they can run in other threads at the same time; DuckDB's MVCC gives each query a committed
snapshot. DuckDB locks the file: one process (the control plane) owns it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import duckdb
import mmh3
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.durable import fsync_dir

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
DEFAULT_WINDOW_MS = DAY_MS
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the sidecar's own bound
MAX_BUCKETS = 10_000  # per series: a chart needs hundreds, not millions

# Labels that mean "served the default without randomising the key": such exposures say
# nothing about a treatment's effect (the names are Split's labels).
NOT_RANDOMISED_LABELS: tuple[str, ...] = (
    "killed",
    "not in split",
    "definition not found",
    "exception",
    "prerequisites not met",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exposures (
    key VARCHAR NOT NULL,
    bucketing_key VARCHAR,
    flag VARCHAR NOT NULL,
    treatment VARCHAR NOT NULL,
    label VARCHAR,
    change_number BIGINT NOT NULL,
    time BIGINT NOT NULL,
    sidecar_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    key_hash BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    key VARCHAR NOT NULL,
    traffic_type VARCHAR NOT NULL,
    event_type VARCHAR NOT NULL,
    value DOUBLE,
    properties JSON,
    time BIGINT NOT NULL,
    sidecar_id VARCHAR NOT NULL,
    batch_id VARCHAR NOT NULL,
    key_hash BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id VARCHAR PRIMARY KEY,
    sidecar_id VARCHAR NOT NULL,
    stored_ms BIGINT NOT NULL,
    exposures INTEGER NOT NULL,
    events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    table_name VARCHAR NOT NULL,
    hour_ms BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    PRIMARY KEY (table_name, hour_ms)
);
"""

_EXPORT_COLUMNS = {
    "exposures": "key, bucketing_key, flag, treatment, label, change_number, "
    "timezone('UTC', make_timestamp(time * 1000)) AS time, sidecar_id, batch_id",
    "events": "key, traffic_type, event_type, value, properties, "
    "timezone('UTC', make_timestamp(time * 1000)) AS time, sidecar_id, batch_id",
}


class StoreError(Exception):
    """The database failed (disk full, I/O error, file locked by another process): the batch
    was not stored and may be retried."""


class InvalidBatch(ValueError):
    """The batch itself is wrong (the message names the record and field); retrying it cannot
    help."""


class MetricKind(StrEnum):
    CONVERSION = "conversion"
    COUNT = "count"
    MEAN = "mean"


class Multiple(StrEnum):
    """What to do with a key exposed to more than one treatment of the flag."""

    FIRST = "first"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class Metric:
    event_type: str
    kind: MetricKind


@dataclass(frozen=True)
class UnitStats:
    """One treatment's units for one metric: the sufficient statistics of the per-unit values
    (field names as in the statistics engine's `ArmStats`)."""

    treatment: str
    n: int
    total: float
    total_squares: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass(frozen=True)
class TreatmentExposures:
    """One treatment's exposure counts, for the sample-ratio check and the release page."""

    treatment: str
    units: int  # keys whose first exposure was this treatment (after the `Multiple` rule)
    switched: int  # of those, keys later exposed to another treatment (0 under EXCLUDE)
    exposures: int  # exposure rows of this treatment (labels not randomised left out)


@dataclass(frozen=True)
class ExposurePoint:
    """Units first exposed in [start_ms, start_ms + bucket), and all units up to its end."""

    start_ms: int
    treatment: str
    units: int
    cumulative_units: int


@dataclass(frozen=True)
class MetricPoint:
    """A treatment's sufficient statistics as of `end_ms` (exposures and events before it)."""

    end_ms: int
    treatment: str
    n: int
    total: float
    total_squares: float


class ExposureStore:
    """The DuckDB file of exposures and events; see the module docstring for the rules."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._root = duckdb.connect(str(path))
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        self.path = path
        self._lock = threading.Lock()  # the one writer
        self._cursors = threading.Lock()  # the root connection only hands out cursors
        self._writer = self._root.cursor()
        try:
            self._writer.execute(_SCHEMA)
        except duckdb.Error as exc:
            self._root.close()
            raise StoreError(f"cannot create the tables in {path}: {exc}") from exc
        self.ingested = {"batches": 0, "duplicates": 0, "exposures": 0, "events": 0}

    def close(self) -> None:
        with self._lock, self._cursors:
            self._writer.close()
            self._root.close()

    # -- writing -------------------------------------------------------------------------

    def ingest(self, request: pb.UploadRequest) -> bool:
        """Stores the batch's impressions and events in one transaction. Returns False, storing
        nothing, when `batch_id` was stored before. Raises InvalidBatch for bad records
        (nothing stored) and StoreError when the database fails (nothing stored)."""
        if not request.batch_id:
            raise InvalidBatch("batch_id: must not be empty")
        exposures = _exposure_rows(request)
        events = _event_rows(request)
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            cursor = self._writer
            try:
                cursor.begin()
                fresh = cursor.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING RETURNING batch_id",
                    [request.batch_id, request.sidecar_id, now_ms, len(exposures), len(events)],
                ).fetchall()
                if not fresh:
                    cursor.rollback()
                    self.ingested["duplicates"] += 1
                    return False
                if exposures:
                    with cursor.appender("exposures") as appender:
                        appender.append_rows(exposures)
                if events:
                    with cursor.appender("events") as appender:
                        appender.append_rows(events)
                cursor.commit()
            except duckdb.Error as exc:
                _rollback_quietly(cursor)
                raise StoreError(f"storing batch {request.batch_id}: {exc}") from exc
            self.ingested["batches"] += 1
            self.ingested["exposures"] += len(exposures)
            self.ingested["events"] += len(events)
        return True

    # -- reading -------------------------------------------------------------------------

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for one reader (one thread); closed on exit. For ad-hoc reads;
        writing through it would bypass the batch bookkeeping."""
        with self._cursors:
            cursor = self._root.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def unit_statistics(
        self,
        flag: str,
        metric: Metric,
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        start_ms: int | None = None,
        end_ms: int | None = None,
        multiple: Multiple = Multiple.FIRST,
        ignore_labels: Sequence[str] = NOT_RANDOMISED_LABELS,
    ) -> dict[str, UnitStats]:
        """The guardrail query: per treatment, the sufficient statistics of the per-unit metric
        values. Only exposures in [start_ms, end_ms) and events before end_ms count. Every
        treatment with exposed units is present (n = 0 for a mean metric without values)."""
        return self.unit_statistics_many(
            flag,
            [metric],
            window_ms=window_ms,
            start_ms=start_ms,
            end_ms=end_ms,
            multiple=multiple,
            ignore_labels=ignore_labels,
        )[metric]

    def unit_statistics_many(
        self,
        flag: str,
        metrics: Sequence[Metric],
        *,
        window_ms: int = DEFAULT_WINDOW_MS,
        start_ms: int | None = None,
        end_ms: int | None = None,
        multiple: Multiple = Multiple.FIRST,
        ignore_labels: Sequence[str] = NOT_RANDOMISED_LABELS,
    ) -> dict[Metric, dict[str, UnitStats]]:
        """`unit_statistics` for several metrics of one flag in one query (one guardrail
        round): the units, the costly part, are worked out once, and the events of all the
        metrics' types are joined with them in one pass."""
        wanted = list(dict.fromkeys(metrics))
        if not wanted:
            return {}
        params = _unit_params(flag, start_ms, end_ms, multiple, ignore_labels)
        params["window"] = _positive(window_ms, "window_ms")
        types = list(dict.fromkeys(metric.event_type for metric in wanted))
        params |= {f"type{n}": event_type for n, event_type in enumerate(types)}
        per_metric = []
        for n, metric in enumerate(wanted):
            value, include = _METRIC_VALUE[metric.kind]
            per_metric.append(
                f"SELECT {n} AS metric, treatment, count(*) AS n, sum({value}) AS total, "
                f"sum(({value}) * ({value})) AS squares FROM hits "
                f"WHERE event_type = $type{types.index(metric.event_type)} AND {include} "
                f"GROUP BY treatment"
            )
        hits = _HITS_SQL.format(
            types=", ".join(f"$type{n}" for n in range(len(types))),
            extra=", e.event_type",
            group="u.key_hash, e.event_type",
        )
        sql = f"""
            WITH {_UNITS_SQL},
            {hits},
            metrics AS ({" UNION ALL ".join(per_metric)}),
            arms AS (SELECT treatment, count(*) AS n FROM units GROUP BY treatment)
            SELECT r.metric, a.treatment, a.n, coalesce(m.n, 0),
                   coalesce(m.total, 0)::DOUBLE, coalesce(m.squares, 0)::DOUBLE
            FROM arms a CROSS JOIN range({len(wanted)}) r(metric)
            LEFT JOIN metrics m ON m.metric = r.metric AND m.treatment = a.treatment
            ORDER BY r.metric, a.treatment
        """
        with self.cursor() as cursor:
            rows = cursor.execute(sql, params).fetchall()
        found: dict[Metric, dict[str, UnitStats]] = {metric: {} for metric in wanted}
        for n, treatment, units, valued, total, squares in rows:
            metric = wanted[n]
            count = valued if metric.kind is MetricKind.MEAN else units
            found[metric][treatment] = UnitStats(
                treatment, int(count), float(total), float(squares)
            )
        return found

    def exposure_counts(
        self,
        flag: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        multiple: Multiple = Multiple.FIRST,
        ignore_labels: Sequence[str] = NOT_RANDOMISED_LABELS,
    ) -> dict[str, TreatmentExposures]:
        """Per treatment: units (as `unit_statistics` counts them), switched units, and
        exposure rows. The sample-ratio check compares `units` with the dial's split."""
        params = _unit_params(flag, start_ms, end_ms, multiple, ignore_labels)
        sql = f"""
            WITH {_UNITS_SQL},
            arms AS (
                SELECT treatment, count(*) AS units, count(*) FILTER (WHERE switched) AS switched
                FROM units GROUP BY treatment
            ),
            rows_ AS (SELECT treatment, sum(exposures) AS exposures FROM per_treatment
                      GROUP BY treatment)
            SELECT r.treatment, coalesce(a.units, 0), coalesce(a.switched, 0), r.exposures
            FROM rows_ r LEFT JOIN arms a USING (treatment)
            ORDER BY r.treatment
        """
        with self.cursor() as cursor:
            rows = cursor.execute(sql, params).fetchall()
        return {
            treatment: TreatmentExposures(treatment, int(units), int(switched), int(exposures))
            for treatment, units, switched, exposures in rows
        }

    def exposure_series(
        self,
        flag: str,
        *,
        bucket_ms: int = HOUR_MS,
        start_ms: int | None = None,
        end_ms: int | None = None,
        multiple: Multiple = Multiple.FIRST,
        ignore_labels: Sequence[str] = NOT_RANDOMISED_LABELS,
    ) -> list[ExposurePoint]:
        """New and cumulative units per treatment in every bucket (aligned on the epoch) from
        the first exposure's bucket to the last first exposure's, gaps included, for charts."""
        params = _unit_params(flag, start_ms, end_ms, multiple, ignore_labels)
        params["bucket"] = _positive(bucket_ms, "bucket_ms")
        sql = f"""
            WITH {_UNITS_SQL},
            new_units AS (
                SELECT treatment, first_time // $bucket * $bucket AS b, count(*) AS units
                FROM units GROUP BY ALL
            ),
            {_GRID_SQL.format(source="new_units")}
            SELECT g.b, g.treatment, coalesce(n.units, 0) AS units,
                   sum(coalesce(n.units, 0)) OVER (PARTITION BY g.treatment ORDER BY g.b)
            FROM grid g LEFT JOIN new_units n USING (treatment, b)
            ORDER BY g.b, g.treatment
        """
        with self.cursor() as cursor:
            _check_buckets(cursor, params, 0)
            rows = cursor.execute(sql, params).fetchall()
        return [ExposurePoint(int(b), t, int(units), int(cum)) for b, t, units, cum in rows]

    def metric_series(
        self,
        flag: str,
        metric: Metric,
        *,
        bucket_ms: int = HOUR_MS,
        window_ms: int = DEFAULT_WINDOW_MS,
        start_ms: int | None = None,
        end_ms: int | None = None,
        multiple: Multiple = Multiple.FIRST,
        ignore_labels: Sequence[str] = NOT_RANDOMISED_LABELS,
    ) -> list[MetricPoint]:
        """`unit_statistics` as of the end of every bucket (cumulative), for the difference
        and its confidence band over time. The last point, taken without end_ms, equals
        `unit_statistics` without end_ms.

        One pass: each unit's value changes only in buckets where it has attributed events,
        so the per-bucket change of the sums (v - v_before, v² - v_before²) is summed over
        those (unit, bucket) pairs and accumulated, instead of recomputing every bucket."""
        params = _unit_params(flag, start_ms, end_ms, multiple, ignore_labels)
        params |= {
            "type0": metric.event_type,
            "window": _positive(window_ms, "window_ms"),
            "bucket": _positive(bucket_ms, "bucket_ms"),
        }
        value, include = _METRIC_VALUE[metric.kind]
        entering = (
            "SELECT treatment, b, count(*) FILTER (WHERE before IS NULL) AS units FROM changes "
            "GROUP BY ALL"
            if metric.kind is MetricKind.MEAN
            else "SELECT treatment, first_time // $bucket * $bucket AS b, count(*) AS units "
            "FROM units GROUP BY ALL"
        )
        sql = f"""
            WITH {_UNITS_SQL},
            {_HITS_SQL.format(types="$type0", extra=_EVENT_BUCKET, group="u.key_hash, b")},
            running AS (
                SELECT key_hash, treatment, b,
                       sum(events) OVER w AS events, sum(valued) OVER w AS valued,
                       sum(value_sum) OVER w AS value_sum
                FROM hits WINDOW w AS (PARTITION BY key_hash ORDER BY b)
            ),
            unit_values AS (
                SELECT key_hash, treatment, b, {value} AS v FROM running WHERE {include}
            ),
            changes AS (
                SELECT treatment, b, v, lag(v) OVER (PARTITION BY key_hash ORDER BY b) AS before
                FROM unit_values
            ),
            deltas AS (
                SELECT treatment, b, sum(v - coalesce(before, 0)) AS total,
                       sum(v * v - coalesce(before * before, 0)) AS squares
                FROM changes GROUP BY ALL
            ),
            entering AS ({entering}),
            marks AS (SELECT treatment, b FROM deltas UNION SELECT treatment, b FROM entering),
            {_GRID_SQL.format(source="marks")}
            SELECT g.b + $bucket, g.treatment,
                   sum(coalesce(n.units, 0)) OVER w,
                   sum(coalesce(d.total, 0)) OVER w,
                   sum(coalesce(d.squares, 0)) OVER w
            FROM grid g
            LEFT JOIN deltas d USING (treatment, b)
            LEFT JOIN entering n USING (treatment, b)
            WINDOW w AS (PARTITION BY g.treatment ORDER BY g.b)
            ORDER BY g.b, g.treatment
        """
        with self.cursor() as cursor:
            _check_buckets(cursor, params, window_ms)
            rows = cursor.execute(sql, params).fetchall()
        return [
            MetricPoint(int(end), t, int(n), float(total), max(float(squares), 0.0))
            for end, t, n, total, squares in rows
        ]

    # -- Parquet export ------------------------------------------------------------------

    def export_parquet(self, directory: Path, *, now_ms: int | None = None) -> list[Path]:
        """Writes every complete hour (ended by now_ms) that has rows not yet exported, as
        `<table>/date=YYYY-MM-DD/hour=HH/data.parquet` for both tables; an hour that received
        late rows is written again whole (replacing its file), so running it again and again
        is safe. Returns the files written."""
        limit = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) // HOUR_MS
        written: list[Path] = []
        for table in ("exposures", "events"):
            with self.cursor() as cursor:
                pending = cursor.execute(
                    f"""
                    SELECT t.hour_ms, t.row_count FROM (
                        SELECT time // {HOUR_MS} * {HOUR_MS} AS hour_ms, count(*) AS row_count
                        FROM {table} WHERE time < $limit GROUP BY ALL
                    ) t
                    LEFT JOIN exports x ON x.table_name = $table AND x.hour_ms = t.hour_ms
                    WHERE x.row_count IS DISTINCT FROM t.row_count
                    ORDER BY t.hour_ms
                    """,
                    {"limit": limit * HOUR_MS, "table": table},
                ).fetchall()
            for hour_ms, _ in pending:
                path, rows = self._export_hour(directory, table, int(hour_ms))
                if rows:
                    written.append(path)
                    self._record_export(table, int(hour_ms), rows)
        return written

    def export_hour(self, directory: Path, hour_ms: int) -> list[Path]:
        """Writes (again) the hour starting at hour_ms for both tables; hours without rows get
        no file."""
        if hour_ms % HOUR_MS:
            raise ValueError(f"hour_ms={hour_ms} is not the start of an hour")
        written = []
        for table in ("exposures", "events"):
            path, rows = self._export_hour(directory, table, hour_ms)
            if rows:
                written.append(path)
                self._record_export(table, hour_ms, rows)
        return written

    def _export_hour(self, directory: Path, table: str, hour_ms: int) -> tuple[Path, int]:
        hour = datetime.fromtimestamp(hour_ms / 1000, UTC)
        folder = directory / table / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
        target = folder / "data.parquet"
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".data.parquet.{os.getpid()}.{threading.get_ident()}.tmp"
        with self.cursor() as cursor:
            cursor.begin()  # one snapshot: the count is the count of the rows written
            rows = _scalar(
                cursor,
                f"SELECT count(*) FROM {table} WHERE time >= $start AND time < $end",
                {"start": hour_ms, "end": hour_ms + HOUR_MS},
            )
            if rows:
                cursor.execute(
                    f"""COPY (SELECT {_EXPORT_COLUMNS[table]} FROM {table}
                              WHERE time >= {hour_ms} AND time < {hour_ms + HOUR_MS}
                              ORDER BY time, batch_id)
                        TO '{_sql_string(temporary)}' (FORMAT parquet, COMPRESSION zstd)"""
                )
            cursor.rollback()
        if rows:
            with temporary.open("rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            fsync_dir(folder)
        return target, rows

    def _record_export(self, table: str, hour_ms: int, rows: int) -> None:
        with self._lock:
            try:
                self._writer.execute(
                    "INSERT OR REPLACE INTO exports VALUES (?, ?, ?)", [table, hour_ms, rows]
                )
            except duckdb.Error as exc:
                raise StoreError(f"recording the export of {table} {hour_ms}: {exc}") from exc


# -- SQL pieces ----------------------------------------------------------------------------

# Each unit (key) with its first treatment, first exposure, and the time it was first exposed
# to another treatment (NULL when never). `per_treatment` also feeds the exposure counts.
_UNITS_SQL = """
per_treatment AS (
    SELECT key_hash, treatment, min(time) AS since, count(*) AS exposures
    FROM exposures
    WHERE flag = $flag AND time >= $start AND time < $end
      AND (label IS NULL OR NOT list_contains($ignored::VARCHAR[], label))
    GROUP BY key_hash, treatment
),
all_units AS (
    SELECT key_hash,
           arg_min(treatment, since) AS treatment,
           min(since) AS first_time,
           count(*) > 1 AS switched,
           list_extract(min(since, 2), 2) AS switch_time
    FROM per_treatment GROUP BY key_hash
),
units AS (SELECT * FROM all_units WHERE $keep_switched OR NOT switched)
"""

# A unit's attributed events (of the metrics' types, in its window, before it switched and
# before $end), counted per {group} ({extra} selects what the group adds to the key).
_HITS_SQL = """
hits AS (
    SELECT u.key_hash, any_value(u.treatment) AS treatment{extra}, count(*) AS events,
           count(e.value) AS valued, coalesce(sum(e.value), 0) AS value_sum
    FROM units u JOIN events e ON e.key_hash = u.key_hash
    WHERE e.event_type IN ({types})
      AND e.time >= u.first_time AND e.time < u.first_time + $window
      AND e.time < $end
      AND (u.switch_time IS NULL OR e.time < u.switch_time)
    GROUP BY {group}
)
"""

_EVENT_BUCKET = ", e.time // $bucket * $bucket AS b"

# Every bucket from the first to the last mark, for every treatment with units.
_GRID_SQL = """
grid AS (
    SELECT t.treatment, range AS b
    FROM (SELECT DISTINCT treatment FROM units) t,
         range((SELECT min(b) FROM {source}), (SELECT max(b) FROM {source}) + $bucket, $bucket)
)
"""

# Per metric kind: the per-unit value from the unit's (running) counts, and which units
# have a value at all.
_METRIC_VALUE: dict[MetricKind, tuple[str, str]] = {
    MetricKind.CONVERSION: ("1.0", "events > 0"),
    MetricKind.COUNT: ("events::DOUBLE", "events > 0"),
    MetricKind.MEAN: ("value_sum / valued", "valued > 0"),
}


# -- helpers -------------------------------------------------------------------------------


def _exposure_rows(request: pb.UploadRequest) -> list[tuple[Any, ...]]:
    sidecar, batch = request.sidecar_id, request.batch_id
    rows = [
        (
            i.key,
            i.bucketing_key or None,
            i.flag,
            i.treatment,
            i.label or None,
            i.change_number,
            i.time_ms,
            sidecar,
            batch,
            _key_hash(i.key),
        )
        for i in request.impressions
    ]
    for n, (key, _, flag, treatment, _, _, time_ms, *_) in enumerate(rows):
        if not key or not flag or not treatment:
            missing = "key" if not key else "flag" if not flag else "treatment"
            raise InvalidBatch(f"impressions[{n}].{missing}: must not be empty")
        if not 0 <= time_ms <= MAX_TIME_MS:
            raise InvalidBatch(f"impressions[{n}].time_ms: {time_ms} is not a time in ms")
    return rows


def _event_rows(request: pb.UploadRequest) -> list[tuple[Any, ...]]:
    rows = []
    for n, e in enumerate(request.events):
        if not e.key or not e.event_type or not e.traffic_type:
            missing = "key" if not e.key else "event_type" if not e.event_type else "traffic_type"
            raise InvalidBatch(f"events[{n}].{missing}: must not be empty")
        if not 0 <= e.timestamp_ms <= MAX_TIME_MS:
            raise InvalidBatch(f"events[{n}].timestamp_ms: {e.timestamp_ms} is not a time in ms")
        value = e.value if e.HasField("value") else None
        if value is not None and not math.isfinite(value):
            raise InvalidBatch(f"events[{n}].value: {value} is not a finite number")
        if e.properties_json and not _is_json_object(e.properties_json):
            raise InvalidBatch(f"events[{n}].properties_json: not a JSON object")
        rows.append(
            (
                e.key,
                e.traffic_type,
                e.event_type,
                value,
                e.properties_json or None,
                e.timestamp_ms,
                request.sidecar_id,
                request.batch_id,
                _key_hash(e.key),
            )
        )
    return rows


def _key_hash(key: str) -> int:
    """The first 64 bits of the key's MurmurHash3 x64-128, the unit's identity in queries."""
    first: int = mmh3.hash64(key)[0]
    return first


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _unit_params(
    flag: str,
    start_ms: int | None,
    end_ms: int | None,
    multiple: Multiple,
    ignore_labels: Sequence[str],
) -> dict[str, Any]:
    start = 0 if start_ms is None else start_ms
    end = MAX_TIME_MS + 1 if end_ms is None else end_ms
    if start >= end:
        raise ValueError(f"start_ms={start_ms} must come before end_ms={end_ms}")
    return {
        "flag": flag,
        "start": start,
        "end": end,
        "ignored": list(ignore_labels),
        "keep_switched": Multiple(multiple) is Multiple.FIRST,
    }


def _positive(value: int, name: str) -> int:
    if not 0 < value <= MAX_TIME_MS:
        raise ValueError(f"{name}={value} must be a positive number of milliseconds")
    return value


def _check_buckets(
    cursor: duckdb.DuckDBPyConnection, params: dict[str, Any], reach_ms: int
) -> None:
    """Refuses a bucket so small that the series would have more than MAX_BUCKETS points
    (the series reaches from the first unit's exposure to the last one's plus reach_ms)."""
    span = cursor.execute(
        f"WITH {_UNITS_SQL} SELECT max(first_time) - min(first_time) FROM units",
        {key: params[key] for key in ("flag", "start", "end", "ignored", "keep_switched")},
    ).fetchone()
    if span and span[0] is not None and (span[0] + reach_ms) // params["bucket"] >= MAX_BUCKETS:
        raise ValueError(f"bucket_ms={params['bucket']} gives more than {MAX_BUCKETS} buckets")


def _sql_string(path: Path) -> str:
    return str(path).replace("'", "''")


def _scalar(cursor: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> int:
    row = cursor.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _rollback_quietly(cursor: duckdb.DuckDBPyConnection) -> None:
    # No transaction open, or the database is gone: nothing left to undo either way.
    with contextlib.suppress(duckdb.Error):
        cursor.rollback()
