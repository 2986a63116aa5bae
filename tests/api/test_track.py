"""Track validation (Split's rules) and the bounded event queue."""

from __future__ import annotations

import math

import pytest
from fader._gen.fader.v1 import evaluation_pb2 as pb

from sidecar.api.track import Event, EventQueue, QueueFull, event_from_request
from sidecar.api.wire import BadRequest
from sidecar.telemetry.metrics import Metrics


def request(**fields: object) -> pb.TrackRequest:
    base: dict[str, object] = {"key": "u", "traffic_type": "User", "event_type": "page.view"}
    return pb.TrackRequest(**(base | fields))  # type: ignore[arg-type]


def test_valid_event() -> None:
    message = request(value=1.5, properties={"n": pb.AttributeValue(int_value=3)})
    message.timestamp.FromMilliseconds(1_700_000_000_123)
    event = event_from_request(message, 10)
    assert event == Event("u", "user", "page.view", 1.5, {"n": 3}, 1_700_000_000_123)
    assert event_from_request(request(), 10).value is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event_type": "x" * 81}, "event_type: 'x"),
        ({"event_type": "-starts-badly"}, "must start with a letter or digit"),
        ({"value": math.nan}, "value: nan is not a finite number"),
        ({"value": math.inf}, "value: inf is not a finite number"),
        ({"key": ""}, "key: must not be empty"),
        (
            {"properties": {"big": pb.AttributeValue(string_value="x" * 40_000)}},
            "properties: 40003 bytes, at most 32768 allowed",
        ),
    ],
)
def test_invalid_events(fields: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        event_from_request(request(**fields), 10)


def test_too_many_properties() -> None:
    properties = {f"p{i}": pb.AttributeValue(bool_value=True) for i in range(3)}
    with pytest.raises(BadRequest, match="properties: 3 entries, at most 2 allowed"):
        event_from_request(request(properties=properties), 2)


def test_full_queue_refuses_and_counts() -> None:
    metrics = Metrics(lambda: None)
    queue = EventQueue(metrics, capacity=2)
    event = event_from_request(request(), 10)
    queue.put(event)
    queue.put(event)
    with pytest.raises(QueueFull, match="event queue is full"):
        queue.put(event)
    assert len(queue) == 2
    assert metrics.merged().track == {"accepted": 2, "queue_full": 1}
