"""Upload batches: what one TelemetryService.Upload call carries, cut by count and bytes.

A batch holds its impressions as the upload's wire bytes already (entries of
UploadRequest.impressions, as the modes wrote them: `ImpressionModes.encode_all`), and its
other records as plain lists of tuples; the spool writes it as msgpack and reads it back
unchanged after a restart. Its id is chosen when it is sealed and never changes, which is
what makes retries idempotent at the collector.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
from fader._modes import cut_entries, encode_impressions
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.telemetry.events import Event
from sidecar.telemetry.impressions import Impression

# the kinds a batch keeps as lists of tuples (its impressions are wire bytes)
LISTED = ("counts", "unique_keys", "events")
# Per-record framing, roughly what protobuf adds around the strings of one record.
RECORD_OVERHEAD = 32
IMPRESSIONS_FIELD = pb.UploadRequest.IMPRESSIONS_FIELD_NUMBER

CountRow = tuple[str, int, int]  # flag, hour start ms, count
UniqueRow = tuple[str, list[str]]  # flag, keys
EventRow = tuple[str, str, str, float | None, str, int]  # key, tt, type, value, props json, ms


@dataclass
class Batch:
    id: str
    # the impressions: `impression_count` entries of UploadRequest.impressions, as wire bytes
    # in chunks (each whole entries), joined once, when sent or spooled
    impression_entries: list[bytes] = field(default_factory=list)
    impression_count: int = 0
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
            "impressions": self.impression_count,
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

    def add_entries(self, entries: bytes, count: int) -> None:
        """Adds `count` impressions written as upload entries (`ImpressionModes.encode_all`).
        They are cut between two entries where the open batch reaches a limit; their bytes
        are the batch's size, exactly."""
        start, end = 0, len(entries)
        while count:
            batch = self._open
            room = self.max_records - self._records
            if count < room and batch.size + end - start < self.max_bytes:
                batch.impression_entries.append(entries[start:] if start else entries)
                batch.impression_count += count
                batch.size += end - start
                self._records += count
                return
            stop, taken = cut_entries(
                entries, IMPRESSIONS_FIELD, start, room, self.max_bytes - batch.size
            )
            if not taken:  # fewer entries than `count`: never loop on nothing
                raise ValueError(f"{count} more entries announced, none at byte {start}")
            batch.impression_entries.append(entries[start:stop])
            batch.impression_count += taken
            count -= taken
            self._grew(stop - start, taken)
            start = stop

    def add_impressions(self, imps: list[Impression]) -> None:
        """Adds Impressions made elsewhere (a client's exposures, a Split SDK's records),
        which their callers have checked: raises one of UNENCODABLE, and adds nothing, for
        one that cannot be encoded."""
        self.add_entries(encode_impressions(imps, IMPRESSIONS_FIELD), len(imps))

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
    encodes each record alone. Impressions are encoded before they join a batch, so they
    are never among them."""
    bad = Batch(id=batch.id, source=batch.source, mode=batch.mode)
    for kind in LISTED:
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
            b"".join(batch.impression_entries),
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
    """Reads back what `encode` wrote, or what it wrote before impressions were encoded when
    made (older spools); raises ValueError on anything else."""
    try:
        fields: Any = msgpack.unpackb(data, raw=False)
        batch_id, impressions, counts, unique_keys, events, size, *rest = fields
        if len(rest) not in (0, 2):
            raise ValueError(f"{len(fields)} fields")
        source, mode = (str(rest[0]), str(rest[1])) if rest else ("", "")  # older spools: ""
        entries, count = _impression_entries(impressions)
        return Batch(
            id=str(batch_id),
            impression_entries=entries,
            impression_count=count,
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


def _impression_entries(spooled: Any) -> tuple[list[bytes], int]:
    """A spooled batch's impressions as entries, and how many: bytes are checked to be whole
    entries (the upload sends them as they are); a list of rows (an older spool) is encoded."""
    if isinstance(spooled, bytes):
        end, count = cut_entries(spooled, IMPRESSIONS_FIELD, 0, len(spooled), len(spooled) + 1)
        if end != len(spooled):
            raise ValueError("impressions: not whole entries")
        return ([spooled] if spooled else []), count
    rows = [Impression(*row) for row in spooled]
    return ([encode_impressions(rows, IMPRESSIONS_FIELD)] if rows else []), len(rows)


def to_request(batch: Batch, sidecar_id: str, mode: str) -> bytes:
    """The batch's UploadRequest, as the bytes sent. Its impressions are already wire bytes
    (debug mode makes one per lookup, and a message each through the protobuf runtime cost
    more than the lookup); they go between the fields numbered below theirs and those above,
    the order protobuf writes fields in, so the bytes are what serializing the whole message
    would give (tests/telemetry/test_batches.py checks it). Raises one of UNENCODABLE for a
    record that cannot be encoded."""
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
    return b"".join((head.SerializeToString(), *batch.impression_entries, rest.SerializeToString()))
