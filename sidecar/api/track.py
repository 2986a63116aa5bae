"""Track: validating events the way Split's SDKs do, and handing them to the telemetry
pipeline for upload.

When there is no room left anywhere (memory and spool full, or memory full without a spool)
the event is refused with RESOURCE_EXHAUSTED, so the client's `track` returns False, rather
than accepted and dropped. Without a collector, events are counted and dropped (logged once):
accepting them into a queue nobody drains would only grow memory.
"""

from __future__ import annotations

import logging
import math
import re
import time

from fader.pb.fader.v1 import evaluation_pb2 as pb

from sidecar.api import wire
from sidecar.api.wire import BadRequest
from sidecar.telemetry.events import Event
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.pipeline import Pipeline

log = logging.getLogger(__name__)

# Split's event type rule and its size estimate: 1024 + the lengths of the property names and
# values (splitio-client input validation; the JS SDK's BASE_EVENT_SIZE).
EVENT_TYPE = re.compile(r"[a-zA-Z0-9][-_.:a-zA-Z0-9]{0,79}")
BASE_EVENT_BYTES = 1024
MAX_EVENT_BYTES = 32 * 1024


class QueueFull(Exception):
    """No room for the event in memory or the spool: RESOURCE_EXHAUSTED."""


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
            shard.count_track("dropped_no_collector")
            if not self._warned:
                self._warned = True
                log.warning("track events are dropped: no --collector or --control-plane")
            return
        if not self._pipeline.add_event(event):
            shard.count_track("queue_full")
            raise QueueFull("no room for events: the collector is unreachable, the spool full")
        shard.count_track("accepted")


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
    size = BASE_EVENT_BYTES + sum(len(name) + len(str(value)) for name, value in values.items())
    if size > MAX_EVENT_BYTES:
        raise BadRequest(
            f"properties: the event is {size} bytes ({BASE_EVENT_BYTES} + names and values), "
            f"at most {MAX_EVENT_BYTES} allowed"
        )
    return values


def timestamp_ms(request: pb.TrackRequest) -> int:
    if request.HasField("timestamp"):
        return request.timestamp.seconds * 1000 + request.timestamp.nanos // 1_000_000
    return int(time.time() * 1000)
