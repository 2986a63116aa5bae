"""The in-process mode's impressions, from recorded lookups to RecordExposures batches; no I/O.

Lookups answered in process are recorded as the sidecar records its own (`fader._local`);
here the impressions mode the sidecar announced is applied to them with the sidecar's own
code (`fader.impressions.ImpressionModes`: optimized, debug or none, the same observer), and
what an upload would carry (impressions, counts per flag and hour, unique keys) is cut into
batches of at most `batch_records` records (as many as the sidecar takes in one call, as it
announced, up to `MAX_BATCH_RECORDS`), each with an id that stays the same across retries.
Batches wait in `queue` until the sidecar has them; at most `max_records` records wait, and
past that the oldest batch is dropped and counted (the sidecar has been gone for long, and
memory must stay bounded).

Impressions are written as wire bytes when they are made (`ImpressionModes.encode_all`, in
C), and a batch is the RecordExposuresRequest's bytes: in debug mode (an impression per
lookup) an Impression object, then a protobuf message, per impression cost the application
more than the lookup itself.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fader.impressions import ImpressionModes, Mode, Pending
from fader.pb.fader.v1 import evaluation_pb2 as pb

log = logging.getLogger("fader")

# Records in a batch until the sidecar announces how many it takes in one call; whatever it
# announces, at most MAX_BATCH_RECORDS (~700 KB in debug mode, far below gRPC's 4 MiB message
# limit). Fewer, larger calls matter: after each call the sending thread waits for the GIL,
# up to a switch interval (5 ms) while the application's threads run.
BATCH_RECORDS = 5_000
MAX_BATCH_RECORDS = 10_000
MAX_QUEUED_RECORDS = 200_000
# the repeated Impression field the entries are written as
IMPRESSIONS_FIELD = pb.RecordExposuresRequest.IMPRESSIONS_FIELD_NUMBER


class Batch(NamedTuple):
    """One RecordExposuresRequest, as the bytes sent, and how many records it holds."""

    data: bytes
    records: int


class ExposureBuffer:
    """Applies the mode to recorded lookups and keeps the batches the sidecar has not taken."""

    def __init__(self, client_id: str, max_records: int = MAX_QUEUED_RECORDS) -> None:
        self.client_id = client_id
        self.max_records = max_records
        self.queue: deque[Batch] = deque()
        self.queued_records = 0
        self.sent_records = 0
        self.dropped_records = 0
        self.batch_records = BATCH_RECORDS
        self._modes: ImpressionModes | None = None
        # impressions made and not yet sealed: (wire entries, how many), at most
        # batch_records in each
        self._entries: list[tuple[bytes, int]] = []

    @property
    def mode(self) -> str:
        return self._modes.mode.value if self._modes is not None else ""

    def set_mode(self, mode: str, observer_size: int, max_batch_items: int) -> None:
        """Follows the sidecar's mode ("" : record nothing) and the most records it takes
        in one call (0: not announced); what the old mode gathered is sealed first, so it
        is sent as it was made."""
        self.batch_records = min(max_batch_items or BATCH_RECORDS, MAX_BATCH_RECORDS)
        if mode == self.mode:
            return
        self.seal()
        self._modes = ImpressionModes(Mode(mode), observer_size) if mode else None

    def process(self, requests: Iterable[Pending]) -> None:
        """Applies the mode, `batch_records` lookups at a time, so that no call makes more
        impressions than a batch holds."""
        modes = self._modes
        if modes is None:
            return
        for chunk in chunks(requests, self.batch_records):
            encoded = modes.encode_all(chunk, IMPRESSIONS_FIELD)
            if encoded.written:
                self._entries.append((encoded.entries, encoded.written))
            if encoded.unencodable:
                self.dropped_records += encoded.unencodable
                log.error(
                    "fader: %d impression(s) dropped: they cannot be encoded", encoded.unencodable
                )

    def open_records(self) -> int:
        """Impressions made and not yet sealed into a batch."""
        return sum(written for _, written in self._entries)

    def seal(self) -> None:
        """Cuts everything gathered so far into batches at the end of the queue."""
        modes = self._modes
        entries, self._entries = self._entries, []
        counts = modes.take_counts() if modes is not None else []
        unique = modes.unique_keys.take() if modes is not None else []
        if not (entries or counts or unique):
            return
        batch = _OpenBatch()
        for made, written in entries:
            batch = self._with_room(batch, written)
            batch.parts.append(made)
            batch.records += written
        for flag, hour, count in counts:
            batch = self._with_room(batch, 1)
            batch.rest.counts.add(flag=flag, hour_ms=hour, count=count)
            batch.records += 1
        for flag, keys in unique:
            for start in range(0, len(keys), self.batch_records):
                chunk = keys[start : start + self.batch_records]
                batch = self._with_room(batch, len(chunk))
                batch.rest.unique_keys.add(flag=flag, keys=chunk)
                batch.records += len(chunk)
        self._enqueue(batch.sealed(self.client_id))

    def _with_room(self, batch: _OpenBatch, records: int) -> _OpenBatch:
        """`batch`, or a new one once `batch` is queued if it cannot take `records` more: the
        sidecar refuses a batch of more records than it announced, and a refused batch is
        dropped."""
        if batch.records + records > self.batch_records and batch.records:
            self._enqueue(batch.sealed(self.client_id))
            return _OpenBatch()
        return batch

    def sent(self, batch: Batch) -> None:
        """The sidecar has `batch` (the oldest, unless it was dropped meanwhile)."""
        self.sent_records += batch.records
        if self.queue and self.queue[0] is batch:
            self.queue.popleft()
            self.queued_records -= batch.records

    def refused(self, batch: Batch) -> None:
        """The sidecar refused `batch` for good (it is malformed): dropped, counted."""
        self.dropped_records += batch.records
        if self.queue and self.queue[0] is batch:
            self.queue.popleft()
            self.queued_records -= batch.records

    def _enqueue(self, batch: Batch) -> None:
        self.queue.append(batch)
        self.queued_records += batch.records
        while self.queued_records > self.max_records and len(self.queue) > 1:
            lost = self.queue.popleft().records
            self.queued_records -= lost
            self.dropped_records += lost
            log.warning(
                "fader: %d exposure record(s) dropped: the sidecar has not taken them and at "
                "most %d may wait",
                lost,
                self.max_records,
            )


class _OpenBatch:
    """A batch being filled: its impressions as wire entries, its counts and unique keys in
    a message of their own."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.rest = pb.RecordExposuresRequest()
        self.records = 0

    def sealed(self, client_id: str) -> Batch:
        """The request's bytes: its fields numbered below the impressions', the entries,
        then those above, the order protobuf writes fields in, so the bytes are what
        serializing the whole message would give."""
        head = pb.RecordExposuresRequest(batch_id=uuid.uuid4().hex, client_id=client_id)
        data = b"".join((head.SerializeToString(), *self.parts, self.rest.SerializeToString()))
        return Batch(data, self.records)


def chunks(requests: Iterable[Pending], limit: int) -> Iterator[list[Pending]]:
    """`requests` in lists of at most `limit` lookups, a request's lookups split where a list
    is full: the modes depend on each lookup, its snapshot and its time, in order, so
    splitting changes nothing they make."""
    chunk: list[Pending] = []
    room = limit
    for snap, time_ms, lookups in requests:
        start = 0
        while len(lookups) - start > room:
            if room:
                chunk.append((snap, time_ms, lookups[start : start + room]))
                start += room
            yield chunk
            chunk, room = [], limit
        if start < len(lookups):
            chunk.append((snap, time_ms, lookups[start:] if start else lookups))
            room -= len(lookups) - start
    if chunk:
        yield chunk
