"""Upload batches: what one TelemetryService.Upload call carries, cut by count and bytes.

A batch is plain lists of tuples so that the spool can write it as msgpack and read it back
unchanged after a restart; it becomes protobuf only when it is sent. Its id is chosen when it
is sealed and never changes, which is what makes retries idempotent at the collector.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
from fader._modes import encode_impressions
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.telemetry.events import Event
from sidecar.telemetry.impressions import Impression

KINDS = ("impressions", "counts", "unique_keys", "events")
# Per-record framing, roughly what protobuf adds around the strings of one record.
RECORD_OVERHEAD = 32
IMPRESSIONS_FIELD = pb.UploadRequest.IMPRESSIONS_FIELD_NUMBER

CountRow = tuple[str, int, int]  # flag, hour start ms, count
UniqueRow = tuple[str, list[str]]  # flag, keys
EventRow = tuple[str, str, str, float | None, str, int]  # key, tt, type, value, props json, ms


@dataclass
class Batch:
    id: str
    impressions: list[Impression] = field(default_factory=list)
    counts: list[CountRow] = field(default_factory=list)
    unique_keys: list[UniqueRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    size: int = 0
    # who made the records: "" for the sidecar's own, else a Split SDK (UploadRequest.source)
    source: str = ""
    # the impressions mode the records were made in, when not the pipeline's (a Split SDK's)
    mode: str = ""

    def records(self) -> dict[str, int]:
        """Records per kind, for the counters (a unique-keys row counts its keys)."""
        return {
            "impressions": len(self.impressions),
            "counts": len(self.counts),
            "unique_keys": sum(len(keys) for _, keys in self.unique_keys),
            "events": len(self.events),
        }

    def __len__(self) -> int:
        return sum(self.records().values())


def event_row(event: Event) -> EventRow:
    properties = json.dumps(event.properties, separators=(",", ":")) if event.properties else ""
    return (
        event.key,
        event.traffic_type,
        event.event_type,
        event.value,
        properties,
        event.timestamp_ms,
    )


def event_size(row: EventRow) -> int:
    return RECORD_OVERHEAD + len(row[0]) + len(row[1]) + len(row[2]) + len(row[4])


class BatchBuilder:
    """Collects records into the open batch and seals it when it reaches `max_records`
    records or `max_bytes` estimated bytes; sealed batches go to `sealed`."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.sealed: list[Batch] = []
        self._open = Batch(id="")
        self._records = 0

    @property
    def open_records(self) -> int:
        return self._records

    def add_impressions(self, imps: list[Impression]) -> None:
        """Runs once per impression made: the size estimate is inlined to keep it cheap."""
        batch, records = self._open, self._records
        max_records, max_bytes = self.max_records, self.max_bytes
        for imp in imps:
            batch.impressions.append(imp)
            batch.size += (
                RECORD_OVERHEAD
                + len(imp[0])
                + len(imp[1] or "")
                + len(imp[2])
                + len(imp[3])
                + len(imp[4] or "")
            )
            records += 1
            if records >= max_records or batch.size >= max_bytes:
                self._records = records
                self.seal()
                batch, records = self._open, 0
        self._records = records

    def add_event(self, row: EventRow) -> None:
        self._open.events.append(row)
        self._grew(event_size(row))

    def add_counts(self, rows: list[CountRow]) -> None:
        for row in rows:
            self._open.counts.append(row)
            self._grew(RECORD_OVERHEAD + len(row[0]))

    def add_unique_keys(self, rows: list[UniqueRow]) -> None:
        """A flag's keys may be split over several batches so that none grows too big."""
        for flag, keys in rows:
            start = 0
            while start < len(keys):
                room = max(1, self.max_records - self._records)
                chunk = keys[start : start + room]
                self._open.unique_keys.append((flag, chunk))
                start += len(chunk)
                self._grew(RECORD_OVERHEAD + len(flag) + sum(len(k) + 2 for k in chunk), len(chunk))

    def seal(self) -> None:
        """Seals the open batch, if it holds anything."""
        if self._records:
            self._open.id = uuid.uuid4().hex
            self.sealed.append(self._open)
            self._open = Batch(id="")
            self._records = 0

    def _grew(self, size: int, records: int = 1) -> None:
        self._open.size += size
        self._records += records
        if self._records >= self.max_records or self._open.size >= self.max_bytes:
            self.seal()


# What encoding raises for a record it cannot hold: a string that is not valid Unicode (a lone
# surrogate from a JSON escape), an integer out of its field's range.
UNENCODABLE = (ValueError, TypeError, OverflowError)


def remove_unencodable(batch: Batch) -> Batch:
    """Takes the records that cannot be encoded (for the spool or the upload) out of `batch`
    and returns them as a batch of their own, to be counted as lost: one bad record must never
    make the batch around it unencodable. Called only after encoding the batch failed: it
    encodes each record alone."""
    bad = Batch(id=batch.id, source=batch.source, mode=batch.mode)
    for kind in KINDS:
        records: list[Any] = getattr(batch, kind)
        rejected = [record for record in records if not _encodable(kind, record)]
        if rejected:
            ids = {id(record) for record in rejected}
            setattr(batch, kind, [record for record in records if id(record) not in ids])
            setattr(bad, kind, rejected)
    return bad


def _encodable(kind: str, record: Any) -> bool:
    alone = Batch(id="-")
    getattr(alone, kind).append(record)
    try:
        encode(alone)
        to_request(alone, "-", "-")
    except UNENCODABLE:
        return False
    return True


def encode(batch: Batch) -> bytes:
    """The spool's form of a batch (msgpack)."""
    data: bytes = msgpack.packb(
        [
            batch.id,
            [list(imp) for imp in batch.impressions],
            batch.counts,
            batch.unique_keys,
            batch.events,
            batch.size,
            batch.source,
            batch.mode,
        ],
        use_bin_type=True,
    )
    return data


def decode(data: bytes) -> Batch:
    """Reads back what `encode` wrote; raises ValueError on anything else."""
    try:
        fields: Any = msgpack.unpackb(data, raw=False)
        batch_id, impressions, counts, unique_keys, events, size, *rest = fields
        if len(rest) not in (0, 2):
            raise ValueError(f"{len(fields)} fields")
        source, mode = (str(rest[0]), str(rest[1])) if rest else ("", "")  # older spools: ""
        return Batch(
            id=str(batch_id),
            impressions=[Impression(*row) for row in impressions],
            counts=[(str(f), int(h), int(c)) for f, h, c in counts],
            unique_keys=[(str(f), [str(k) for k in keys]) for f, keys in unique_keys],
            events=[
                (str(k), str(t), str(e), None if v is None else float(v), str(p), int(ms))
                for k, t, e, v, p, ms in events
            ],
            size=int(size),
            source=source,
            mode=mode,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ValueError(f"not a spooled batch: {err}") from None


def to_request(batch: Batch, sidecar_id: str, mode: str) -> bytes:
    """The batch's UploadRequest, as the bytes sent. Its impressions (debug mode makes one per
    lookup) are written by C (`fader._modes.encode_impressions`) rather than as one message
    each through the protobuf runtime, which cost more than the lookup; they go between the
    fields numbered below theirs and those above, the order protobuf writes fields in, so the
    bytes are what serializing the whole message would give (tests/telemetry/test_batches.py
    checks it). Raises one of UNENCODABLE for a record that cannot be encoded."""
    head = pb.UploadRequest(
        batch_id=batch.id,
        sidecar_id=sidecar_id,
        impressions_mode=batch.mode or mode,
    )
    rest = pb.UploadRequest(source=batch.source)
    for flag, hour, count in batch.counts:
        rest.counts.add(flag=flag, hour_ms=hour, count=count)
    for flag, keys in batch.unique_keys:
        rest.unique_keys.add(flag=flag, keys=keys)
    for key, traffic_type, event_type, value, properties, timestamp in batch.events:
        event = rest.events.add(
            key=key,
            traffic_type=traffic_type,
            event_type=event_type,
            properties_json=properties,
            timestamp_ms=timestamp,
        )
        if value is not None:
            event.value = value
    impressions = encode_impressions(batch.impressions, IMPRESSIONS_FIELD)
    return head.SerializeToString() + impressions + rest.SerializeToString()
