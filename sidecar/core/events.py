"""Track: events validated the way Split's SDKs validate them, for every lane, and handed to
the telemetry pipeline.

Every field is checked at the door, so that no single event can later make an upload batch
unencodable and cost other users' data: a timestamp must fit the upload's int64 milliseconds
and lie between the epoch and the year 9999 (nanoseconds given as seconds are refused here).

When there is no room left anywhere (memory and spool full, or memory full without a spool)
the event is refused with QueueFull, so the client's `track` returns False, rather than
accepted and dropped. Without a collector, events are refused with NotKept (counted,
logged once), so `track` returns False: accepting them into a queue nobody drains would
only grow memory, and answering "accepted" for an event that is dropped would be a lie.
"""

from __future__ import annotations

import logging
import math
import re
import time

from sidecar.core.refusals import BadRequest, NotKept, QueueFull
from sidecar.core.requests import check_key
from sidecar.telemetry.events import Event
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.pipeline import Pipeline

log = logging.getLogger(__name__)

# Split's event type rule and its size estimate: 1024 + the lengths of the property names and
# values (splitio-client input validation; the JS SDK's BASE_EVENT_SIZE).
EVENT_TYPE = re.compile(r"[a-zA-Z0-9][-_.:a-zA-Z0-9]{0,79}")
BASE_EVENT_BYTES = 1024
MAX_EVENT_BYTES = 32 * 1024
# 9999-12-31T23:59:59.999Z: far beyond any real event, far below int64 milliseconds.
MAX_TIMESTAMP_MS = 253_402_300_799_999


NO_COLLECTOR = (
    "events are not kept: this sidecar has no collector (start it with --collector or "
    "--control-plane)"
)


class EventQueue:
    """Where Track puts validated events: the telemetry pipeline, when there is one."""

    def __init__(self, metrics: Metrics, pipeline: Pipeline | None) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self._warned = False

    def __len__(self) -> int:
        """Events accepted and not yet stored by the collector."""
        return self._pipeline.pending_events() if self._pipeline is not None else 0

    def put(self, event: Event) -> None:
        shard = self._metrics.shard()
        if self._pipeline is None:
            shard.count_track("refused_no_collector")
            if not self._warned:
                self._warned = True
                log.warning("track events are refused: no --collector or --control-plane")
            raise NotKept(NO_COLLECTOR)
        if not self._pipeline.add_event(event):
            shard.count_track("queue_full")
            raise QueueFull("no room for events: the collector is unreachable, the spool full")
        shard.count_track("accepted")

    def refused(self) -> None:
        """Counts an event refused at the door (the lane raises the BadRequest itself)."""
        self._metrics.shard().count_track("invalid")


def make_event(
    key: str,
    traffic_type: str,
    event_type: str,
    value: object,
    properties: dict[str, object] | None,
    timestamp_ms: int | None,
) -> Event:
    """An Event from a lane's decoded fields (properties already through the attribute
    policy); raises BadRequest naming the first bad field."""
    check_key(key, "key")
    if not traffic_type:
        raise BadRequest("traffic_type: must not be empty")
    if not EVENT_TYPE.fullmatch(event_type):
        raise BadRequest(
            f"event_type: {event_type!r} must start with a letter or digit and have "
            "at most 80 of letters, digits, '-', '_', '.', ':'"
        )
    return Event(
        key=key,
        traffic_type=traffic_type.lower(),
        event_type=event_type,
        value=_value(value),
        properties=_properties(properties),
        timestamp_ms=_timestamp(timestamp_ms),
    )


def _value(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("value: must be a number or nil")
    number = float(value)
    if not math.isfinite(number):
        raise BadRequest(f"value: {value} is not a finite number")
    return number


def _properties(values: dict[str, object] | None) -> dict[str, object] | None:
    if not values:
        return None
    for name, item in values.items():
        if isinstance(item, list):
            raise BadRequest(f"properties[{name!r}]: lists are not allowed in event properties")
    size = BASE_EVENT_BYTES + sum(len(name) + len(str(item)) for name, item in values.items())
    if size > MAX_EVENT_BYTES:
        raise BadRequest(
            f"properties: the event is {size} bytes ({BASE_EVENT_BYTES} + names and values), "
            f"at most {MAX_EVENT_BYTES} allowed"
        )
    return values


def _timestamp(timestamp_ms: int | None) -> int:
    if timestamp_ms is None:
        return time.time_ns() // 1_000_000
    if not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS:
        raise BadRequest(
            f"timestamp: {timestamp_ms} ms is not between the epoch and the year 9999 "
            "(a time in nanoseconds or microseconds given as seconds?)"
        )
    return timestamp_ms
