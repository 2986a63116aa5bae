"""Track validation (Split's rules, through fader.v1's decoder) and where validated events go."""

from __future__ import annotations

import math

import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb

from sidecar.api.fader_v1 import event_from_request
from sidecar.core.attributes import AttributePolicy
from sidecar.core.events import MAX_TIMESTAMP_MS, EventQueue, make_event
from sidecar.core.refusals import BadRequest, NotKept, QueueFull
from sidecar.telemetry.events import Event
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import Uploader


def request(**fields: object) -> pb.TrackRequest:
    base: dict[str, object] = {"key": "u", "traffic_type": "User", "event_type": "page.view"}
    return pb.TrackRequest(**(base | fields))  # type: ignore[arg-type]


def test_valid_event() -> None:
    message = request(value=1.5, properties={"n": pb.AttributeValue(int_value=3)})
    message.timestamp.FromMilliseconds(1_700_000_000_123)
    event = event_from_request(message, AttributePolicy(10))
    assert event == Event("u", "user", "page.view", 1.5, {"n": 3}, 1_700_000_000_123)
    assert event_from_request(request(), AttributePolicy(10)).value is None


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
        event_from_request(request(**fields), AttributePolicy(10))


@pytest.mark.parametrize(
    "milliseconds",
    [-1, MAX_TIMESTAMP_MS + 1, 1_700_000_000_123_456_789 * 1000, -(2**62)],
)
def test_timestamps_outside_epoch_to_9999_are_refused_at_the_door(milliseconds: int) -> None:
    """A time in nanoseconds given as seconds (or far negative) used to be accepted and then
    made the whole upload batch unencodable (int64 overflow), losing other users' data."""
    message = request()
    message.timestamp.seconds = milliseconds // 1000
    with pytest.raises(BadRequest, match=r"^timestamp: .* is not between the epoch and the year"):
        event_from_request(message, AttributePolicy(10))
    with pytest.raises(BadRequest, match=r"^timestamp: "):
        make_event("u", "user", "e", None, None, milliseconds)
    assert make_event("u", "user", "e", None, None, MAX_TIMESTAMP_MS).timestamp_ms == (
        MAX_TIMESTAMP_MS
    )


def test_value_must_be_a_number() -> None:
    for value in ("1", True, [1]):
        with pytest.raises(BadRequest, match=r"^value: must be a number or nil$"):
            make_event("u", "user", "e", value, None, None)
    assert make_event("u", "user", "e", 3, None, None).value == 3.0


def test_too_many_properties() -> None:
    properties = {f"p{i}": pb.AttributeValue(bool_value=True) for i in range(3)}
    with pytest.raises(BadRequest, match="properties: 3 entries, at most 2 allowed"):
        event_from_request(request(properties=properties), AttributePolicy(2))


def test_split_size_estimate_boundary() -> None:
    """1024 + len(name) + len(str(value)) may reach 32768 bytes exactly, not one more."""
    fits = {"p": pb.AttributeValue(string_value="x" * (32768 - 1024 - 1))}
    assert event_from_request(request(properties=fits), AttributePolicy(10)).properties == {
        "p": "x" * 31743
    }
    over = {"p": pb.AttributeValue(string_value="x" * (32768 - 1024))}
    with pytest.raises(BadRequest, match="32769 bytes"):
        event_from_request(request(properties=over), AttributePolicy(10))


def test_without_a_collector_events_are_refused_and_counted() -> None:
    """Not accepted-then-dropped: the refusal makes the client's track() return False."""
    metrics = Metrics(lambda: None)
    queue = EventQueue(metrics, None)
    with pytest.raises(NotKept, match="no collector") as caught:
        queue.put(event_from_request(request(), AttributePolicy(10)))
    assert caught.value.code == "FAILED_PRECONDITION"
    assert len(queue) == 0
    assert metrics.merged().track == {"refused_no_collector": 1}


def test_no_room_refuses_and_counts() -> None:
    """No room anywhere: the event is refused (RESOURCE_EXHAUSTED), not dropped."""
    metrics = Metrics(lambda: None)
    pipeline = Pipeline(
        PipelineSettings(memory_bytes=1000),
        Uploader("127.0.0.1:9", 1.0),
    )
    queue = EventQueue(metrics, pipeline)
    event = event_from_request(request(), AttributePolicy(10))
    pipeline._no_room = True  # as if the last sealed batch had found no room
    with pytest.raises(QueueFull, match="no room for events"):
        queue.put(event)
    pipeline._no_room = False
    queue.put(event)
    assert len(queue) == 1
    assert metrics.merged().track == {"accepted": 1, "queue_full": 1}
