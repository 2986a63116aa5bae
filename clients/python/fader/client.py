"""The synchronous client: `fader.Client`.

Lookups never raise because of the sidecar: when it is unreachable, too slow or refuses a
call, they answer "control" (as Split's SDKs do), count it in `fallback_count` and log it.
One channel is opened per Client and reused by every call; share the Client across threads.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import grpc

from fader import _common, fastlane
from fader._common import Attributes
from fader._lane import LaneError, SyncLane, socket_path
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.result import Result


class _Grpc:
    """fader.v1 over one gRPC channel (TCP or unix://)."""

    def __init__(self, target: str, timeout: float, fallbacks: _common.Fallbacks) -> None:
        self._channel = grpc.insecure_channel(target, options=_common.channel_options(target))
        self._stub = pb_grpc.EvaluationServiceStub(self._channel)
        self._timeout = timeout
        self._fallbacks = fallbacks

    def evaluate(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
    ) -> Result:
        request = _common.treatment_request(key, flag, bucketing_key, attributes)
        try:
            response = self._stub.GetTreatment(request, timeout=self._timeout)
        except grpc.RpcError as err:
            return self._fallbacks.record("GetTreatment", err)
        return _common.result(response.evaluation, response.version)

    def treatments(
        self, key: str, names: list[str], bucketing_key: str | None, attributes: Attributes | None
    ) -> dict[str, str]:
        request = _common.treatments_request(key, names, bucketing_key, attributes)
        try:
            response = self._stub.GetTreatments(request, timeout=self._timeout)
        except grpc.RpcError as err:
            control = self._fallbacks.record("GetTreatments", err).treatment
            return dict.fromkeys(names, control)
        return {e.flag: e.treatment for e in response.evaluations}

    def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None,
        properties: Attributes | None,
    ) -> bool:
        request = _common.track_request(key, traffic_type, event_type, value, properties)
        try:
            self._stub.Track(request, timeout=self._timeout)
        except grpc.RpcError as err:
            self._fallbacks.record("Track", err)
            return False
        return True

    def close(self) -> None:
        self._channel.close()


class _FastLane:
    """The same operations as msgpack frames on the fast-lane socket."""

    def __init__(self, path: str, timeout: float, fallbacks: _common.Fallbacks) -> None:
        self._lane = SyncLane(path, timeout)
        self._fallbacks = fallbacks

    def evaluate(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
    ) -> Result:
        try:
            response = self._lane.call(
                fastlane.treatment_request(key, flag, bucketing_key, attributes)
            )
        except LaneError as err:
            return self._fallbacks.record_code("treatment", err.code, err.details)
        return fastlane.result(response)

    def treatments(
        self, key: str, names: list[str], bucketing_key: str | None, attributes: Attributes | None
    ) -> dict[str, str]:
        try:
            response = self._lane.call(
                fastlane.treatments_request(key, names, bucketing_key, attributes)
            )
        except LaneError as err:
            fallback = self._fallbacks.record_code("treatments", err.code, err.details)
            return dict.fromkeys(names, fallback.treatment)
        return {e["flag"]: e["treatment"] for e in response["evaluations"]}

    def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None,
        properties: Attributes | None,
    ) -> bool:
        try:
            self._lane.call(
                fastlane.track_request(key, traffic_type, event_type, value, properties)
            )
        except LaneError as err:
            self._fallbacks.record_code("track", err.code, err.details)
            return False
        return True

    def close(self) -> None:
        self._lane.close()


class Client:
    """`Client("127.0.0.1:8013")`, `Client("unix:///run/fader/fader.sock")` or, for the
    msgpack fast lane, `Client("fastlane:///run/fader/fastlane.sock")`.

    `timeout` is the deadline of every call, in seconds.
    """

    def __init__(self, target: str = "127.0.0.1:8013", *, timeout: float = _common.DEFAULT_TIMEOUT):
        self._fallbacks = _common.Fallbacks()
        path = socket_path(target)
        self._transport: _Grpc | _FastLane = (
            _Grpc(target, timeout, self._fallbacks)
            if path is None
            else _FastLane(path, timeout, self._fallbacks)
        )

    @property
    def fallback_count(self) -> int:
        """Lookups and track calls answered locally because the call to the sidecar failed."""
        return self._fallbacks.count

    def get_treatment(
        self,
        key: str,
        flag: str,
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> str:
        return self.evaluate(key, flag, bucketing_key=bucketing_key, attributes=attributes)[0]

    def get_treatment_with_config(
        self,
        key: str,
        flag: str,
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> tuple[str, str | None]:
        result = self.evaluate(key, flag, bucketing_key=bucketing_key, attributes=attributes)
        return result.treatment, result.config

    def get_treatments(
        self,
        key: str,
        flags: Iterable[str],
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> dict[str, str]:
        """Treatments of `flags` for `key`; an empty list asks for every flag."""
        names = _common.flag_list(flags)
        return self._transport.treatments(key, names, bucketing_key, attributes)

    def evaluate(
        self,
        key: str,
        flag: str,
        *,
        bucketing_key: str | None = None,
        attributes: Attributes | None = None,
    ) -> Result:
        return self._transport.evaluate(key, flag, bucketing_key, attributes)

    def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None = None,
        properties: Attributes | None = None,
    ) -> bool:
        """Queues an event in the sidecar; False when it was not accepted."""
        return self._transport.track(key, traffic_type, event_type, value, properties)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
