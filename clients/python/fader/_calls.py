"""What each client operation sends and how its answer, or its failure, reads: the part of
the clients that does no I/O.

`fader.Client` and `fader.aio.Client`, over gRPC or the fast lane, differ only in how a
request travels (blocking or awaited, protobuf or msgpack). Everything else, the request
built, the value returned, the "control" fallback, is a `Call` built here once for all four.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from fader import _common, fastlane
from fader._common import Attributes
from fader.result import Result

T = TypeVar("T")


class Call(NamedTuple, Generic[T]):
    """One operation: its name (a gRPC method), its request, how an answer reads, and what a
    failure answers, given the "control" result the fallback made. (A NamedTuple: a frozen
    dataclass costs a microsecond to build, a tenth of a fast-lane round trip.)"""

    method: str
    request: Any
    read: Callable[[Any], T]
    failed: Callable[[Result], T]


class Codec(Protocol):
    """How one transport writes requests and reads answers: `fader._common` (fader.v1
    protobuf) and `fader.fastlane` (msgpack maps) are both one."""

    METHODS: tuple[str, str, str]  # names of the treatment, treatments and track operations

    def treatment_request(
        self, key: str, flag: str, bucketing_key: str | None, values: Attributes | None
    ) -> Any: ...

    def treatments_request(
        self, key: str, names: list[str], bucketing_key: str | None, values: Attributes | None
    ) -> Any: ...

    def track_request(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None,
        values: Attributes | None,
    ) -> Any: ...

    def read_result(self, response: Any) -> Result: ...

    def read_treatment(self, response: Any) -> str: ...

    def read_treatments(self, response: Any) -> dict[str, str]: ...


class Calls:
    """The client operations, for one transport's codec."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._methods = codec.METHODS

    def evaluate(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
    ) -> Call[Result]:
        request = self._codec.treatment_request(key, flag, bucketing_key, attributes)
        return Call(self._methods[0], request, self._codec.read_result, _itself)

    def treatment(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
    ) -> Call[str]:
        """`evaluate` for callers that only want the treatment (get_treatment): no Result
        is built from the answer."""
        request = self._codec.treatment_request(key, flag, bucketing_key, attributes)
        return Call(self._methods[0], request, self._codec.read_treatment, _treatment_of)

    def treatments(
        self, key: str, names: list[str], bucketing_key: str | None, attributes: Attributes | None
    ) -> Call[dict[str, str]]:
        request = self._codec.treatments_request(key, names, bucketing_key, attributes)
        return Call(
            self._methods[1],
            request,
            self._codec.read_treatments,
            lambda control: dict.fromkeys(names, control.treatment),
        )

    def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None,
        properties: Attributes | None,
    ) -> Call[bool]:
        request = self._codec.track_request(key, traffic_type, event_type, value, properties)
        return Call(self._methods[2], request, _accepted, _refused)


def _itself(control: Result) -> Result:
    return control


def _treatment_of(control: Result) -> str:
    return control.treatment


def _accepted(_response: Any) -> bool:
    return True


def _refused(_control: Result) -> bool:
    return False


GRPC = Calls(_common)
FAST_LANE = Calls(fastlane)
