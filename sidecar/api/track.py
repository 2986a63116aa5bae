"""Track: validating events the way Split's SDKs do, and queueing them for upload.

The upload pipeline (batching, retry, spool) is its own issue; until it lands the queue only
bounds memory and counts. A full queue refuses the event (RESOURCE_EXHAUSTED, so the client's
`track` returns False) rather than dropping an older one silently.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from dataclasses import dataclass

from fader._gen.fader.v1 import evaluation_pb2 as pb

from sidecar.api import wire
from sidecar.api.wire import BadRequest
from sidecar.telemetry.metrics import Metrics

# Split's event type rule and its property size budget (splitio-client input validation).
EVENT_TYPE = re.compile(r"[a-zA-Z0-9][-_.:a-zA-Z0-9]{0,79}")
MAX_PROPERTIES_BYTES = 32 * 1024
QUEUE_CAPACITY = 10_000


@dataclass(frozen=True)
class Event:
    key: str
    traffic_type: str
    event_type: str
    value: float | None
    properties: dict[str, object] | None
    timestamp_ms: int


class QueueFull(Exception):
    """The event queue is at capacity: RESOURCE_EXHAUSTED."""


class EventQueue:
    """A bounded FIFO of accepted events, drained by the uploader (a later issue)."""

    def __init__(self, metrics: Metrics, capacity: int = QUEUE_CAPACITY) -> None:
        self._events: deque[Event] = deque()
        self._capacity = capacity
        self._metrics = metrics

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: Event) -> None:
        if len(self._events) >= self._capacity:
            self._metrics.shard().count_track("queue_full")
            raise QueueFull(f"event queue is full ({self._capacity} events waiting for upload)")
        self._events.append(event)
        self._metrics.shard().count_track("accepted")


def event_from_request(request: pb.TrackRequest, max_properties: int) -> Event:
    """Checks a TrackRequest field by field; raises BadRequest naming the first bad one."""
    wire.check_key(request.key, "key")
    if not request.traffic_type:
        raise BadRequest("traffic_type: must not be empty")
    if not EVENT_TYPE.fullmatch(request.event_type):
        raise BadRequest(
            f"event_type: {request.event_type!r} must start with a letter or digit and have "
            "at most 80 of letters, digits, '-', '_', '.', ':'"
        )
    value = request.value if request.HasField("value") else None
    if value is not None and not math.isfinite(value):
        raise BadRequest(f"value: {value} is not a finite number")
    return Event(
        key=request.key,
        traffic_type=request.traffic_type.lower(),
        event_type=request.event_type,
        value=value,
        properties=properties(request, max_properties),
        timestamp_ms=timestamp_ms(request),
    )


def properties(request: pb.TrackRequest, limit: int) -> dict[str, object] | None:
    values = wire.attributes(request.properties, limit, "properties")
    if values is None:
        return None
    for name, value in values.items():
        if isinstance(value, list):
            raise BadRequest(f"properties[{name!r}]: lists are not allowed in event properties")
    size = sum(len(name) + len(str(value)) for name, value in values.items())
    if size > MAX_PROPERTIES_BYTES:
        raise BadRequest(f"properties: {size} bytes, at most {MAX_PROPERTIES_BYTES} allowed")
    return values


def timestamp_ms(request: pb.TrackRequest) -> int:
    if request.HasField("timestamp"):
        return request.timestamp.seconds * 1000 + request.timestamp.nanos // 1_000_000
    return int(time.time() * 1000)
