"""Track validation (Split's rules) and where validated events go."""

from __future__ import annotations

import math

import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb

from sidecar.api.track import EventQueue, QueueFull, event_from_request
from sidecar.api.wire import BadRequest
from sidecar.telemetry.events import Event
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import CollectorTarget, Uploader


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
            r"properties: the event is 41027 bytes \(1024 \+ names and values\), at most 32768",
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


def test_split_size_estimate_boundary() -> None:
    """1024 + len(name) + len(str(value)) may reach 32768 bytes exactly, not one more."""
    fits = {"p": pb.AttributeValue(string_value="x" * (32768 - 1024 - 1))}
    assert event_from_request(request(properties=fits), 10).properties == {"p": "x" * 31743}
    over = {"p": pb.AttributeValue(string_value="x" * (32768 - 1024))}
    with pytest.raises(BadRequest, match="32769 bytes"):
        event_from_request(request(properties=over), 10)


def test_without_a_collector_events_are_counted_as_dropped() -> None:
    metrics = Metrics(lambda: None)
    queue = EventQueue(metrics, None)
    queue.put(event_from_request(request(), 10))
    assert len(queue) == 0
    assert metrics.merged().track == {"dropped_no_collector": 1}


def test_no_room_refuses_and_counts() -> None:
    """No room anywhere: the event is refused (RESOURCE_EXHAUSTED), not dropped."""
    metrics = Metrics(lambda: None)
    pipeline = Pipeline(
        PipelineSettings(memory_bytes=1000),
        Uploader(CollectorTarget("127.0.0.1:9"), 1.0),
    )
    queue = EventQueue(metrics, pipeline)
    event = event_from_request(request(), 10)
    pipeline._no_room = True  # as if the last sealed batch had found no room
    with pytest.raises(QueueFull, match="no room for events"):
        queue.put(event)
    pipeline._no_room = False
    queue.put(event)
    assert len(queue) == 1
    assert metrics.merged().track == {"accepted": 1, "queue_full": 1}
