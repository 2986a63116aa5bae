"""The in-process mode's impressions, from recorded lookups to RecordExposures batches; no I/O.

Lookups answered in process are recorded as the sidecar records its own (`fader._local`);
here the impressions mode the sidecar announced is applied to them with the sidecar's own
code (`fader.impressions.ImpressionModes`: optimized, debug or none, the same observer), and
what an upload would carry (impressions, counts per flag and hour, unique keys) is cut into
batches of at most `BATCH_RECORDS` records, each with an id that stays the same across
retries. Batches wait in `queue` until the sidecar has them; at most `max_records` records
wait, and past that the oldest batch is dropped and counted (the sidecar has been gone for
long, and memory must stay bounded).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Iterable

from fader.impressions import Impression, ImpressionModes, Mode, Pending, add_messages
from fader.pb.fader.v1 import evaluation_pb2 as pb

log = logging.getLogger("fader")

BATCH_RECORDS = 5_000
MAX_QUEUED_RECORDS = 200_000


class ExposureBuffer:
    """Applies the mode to recorded lookups and keeps the batches the sidecar has not taken."""

    def __init__(self, client_id: str, max_records: int = MAX_QUEUED_RECORDS) -> None:
        self.client_id = client_id
        self.max_records = max_records
        self.queue: deque[pb.RecordExposuresRequest] = deque()
        self.queued_records = 0
        self.sent_records = 0
        self.dropped_records = 0
        self._modes: ImpressionModes | None = None
        self._impressions: list[Impression] = []

    @property
    def mode(self) -> str:
        return self._modes.mode.value if self._modes is not None else ""

    def set_mode(self, mode: str, observer_size: int) -> None:
        """Follows the sidecar's mode ("" : record nothing); what the old mode gathered is
        sealed first, so it is sent as it was made."""
        if mode == self.mode:
            return
        self.seal()
        self._modes = ImpressionModes(Mode(mode), observer_size) if mode else None

    def process(self, requests: Iterable[Pending]) -> None:
        if self._modes is not None:
            self._impressions += self._modes.process_all(requests)

    def open_records(self) -> int:
        """Impressions made and not yet sealed into a batch."""
        return len(self._impressions)

    def seal(self) -> None:
        """Cuts everything gathered so far into batches at the end of the queue."""
        modes = self._modes
        impressions, self._impressions = self._impressions, []
        counts = modes.take_counts() if modes is not None else []
        unique = modes.unique_keys.take() if modes is not None else []
        if not (impressions or counts or unique):
            return
        request = self._new_request()
        records = 0
        for start in range(0, len(impressions), BATCH_RECORDS):
            if records:
                self._enqueue(request, records)
                request, records = self._new_request(), 0
            made = impressions[start : start + BATCH_RECORDS]
            add_messages(request.impressions, made)
            records += len(made)
        for flag, hour, count in counts:
            request.counts.add(flag=flag, hour_ms=hour, count=count)
            records += 1
        for flag, keys in unique:
            for start in range(0, len(keys), BATCH_RECORDS):
                chunk = keys[start : start + BATCH_RECORDS]
                if records + len(chunk) > BATCH_RECORDS and records:
                    self._enqueue(request, records)
                    request, records = self._new_request(), 0
                request.unique_keys.add(flag=flag, keys=chunk)
                records += len(chunk)
        self._enqueue(request, records)

    def sent(self, request: pb.RecordExposuresRequest) -> None:
        """The sidecar has `request` (the oldest batch, unless it was dropped meanwhile)."""
        records = _records(request)
        self.sent_records += records
        if self.queue and self.queue[0] is request:
            self.queue.popleft()
            self.queued_records -= records

    def refused(self, request: pb.RecordExposuresRequest) -> None:
        """The sidecar refused `request` for good (it is malformed): dropped, counted."""
        records = _records(request)
        self.dropped_records += records
        if self.queue and self.queue[0] is request:
            self.queue.popleft()
            self.queued_records -= records

    def _new_request(self) -> pb.RecordExposuresRequest:
        return pb.RecordExposuresRequest(batch_id=uuid.uuid4().hex, client_id=self.client_id)

    def _enqueue(self, request: pb.RecordExposuresRequest, records: int) -> None:
        self.queue.append(request)
        self.queued_records += records
        while self.queued_records > self.max_records and len(self.queue) > 1:
            oldest = self.queue.popleft()
            lost = _records(oldest)
            self.queued_records -= lost
            self.dropped_records += lost
            log.warning(
                "fader: %d exposure record(s) dropped: the sidecar has not taken them and at "
                "most %d may wait",
                lost,
                self.max_records,
            )


def _records(request: pb.RecordExposuresRequest) -> int:
    return (
        len(request.impressions)
        + len(request.counts)
        + sum(len(row.keys) for row in request.unique_keys)
    )
