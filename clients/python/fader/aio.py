"""The asyncio client: `fader.aio.Client`, the twin of `fader.Client` with awaitable methods.

Create it inside a running event loop (gRPC's asyncio channel belongs to the loop it is
created on). It answers "control" on failure exactly like the sync client.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

import grpc

from fader import _common, fastlane
from fader._common import Attributes
from fader._lane import AsyncLane, LaneError, socket_path
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.result import Result

__all__ = ["Client", "Result"]


class _Grpc:
    """fader.v1 over one asyncio gRPC channel (TCP or unix://)."""

    def __init__(self, target: str, timeout: float, fallbacks: _common.Fallbacks) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_common.channel_options(target))
        self._stub = pb_grpc.EvaluationServiceStub(self._channel)
        self._timeout = timeout
        self._fallbacks = fallbacks

    async def evaluate(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
    ) -> Result:
        request = _common.treatment_request(key, flag, bucketing_key, attributes)
        try:
            response = await self._stub.GetTreatment(request, timeout=self._timeout)
        except grpc.RpcError as err:
            return self._fallbacks.record("GetTreatment", err)
        return _common.result(response.evaluation, response.version)

    async def treatments(
        self, key: str, names: list[str], bucketing_key: str | None, attributes: Attributes | None
    ) -> dict[str, str]:
        request = _common.treatments_request(key, names, bucketing_key, attributes)
        try:
            response = await self._stub.GetTreatments(request, timeout=self._timeout)
        except grpc.RpcError as err:
            control = self._fallbacks.record("GetTreatments", err).treatment
            return dict.fromkeys(names, control)
        return {e.flag: e.treatment for e in response.evaluations}

    async def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None,
        properties: Attributes | None,
    ) -> bool:
        request = _common.track_request(key, traffic_type, event_type, value, properties)
        try:
            await self._stub.Track(request, timeout=self._timeout)
        except grpc.RpcError as err:
            self._fallbacks.record("Track", err)
            return False
        return True

    async def close(self) -> None:
        await self._channel.close()


class _FastLane:
    """The same operations as pipelined msgpack frames on the fast-lane socket."""

    def __init__(self, path: str, timeout: float, fallbacks: _common.Fallbacks) -> None:
        self._lane = AsyncLane(path, timeout)
        self._fallbacks = fallbacks

    async def evaluate(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
    ) -> Result:
        try:
            response = await self._lane.call(
                fastlane.treatment_request(key, flag, bucketing_key, attributes)
            )
        except LaneError as err:
            return self._fallbacks.record_code("treatment", err.code, err.details)
        return fastlane.result(response)

    async def treatments(
        self, key: str, names: list[str], bucketing_key: str | None, attributes: Attributes | None
    ) -> dict[str, str]:
        try:
            response = await self._lane.call(
                fastlane.treatments_request(key, names, bucketing_key, attributes)
            )
        except LaneError as err:
            fallback = self._fallbacks.record_code("treatments", err.code, err.details)
            return dict.fromkeys(names, fallback.treatment)
        return {e["flag"]: e["treatment"] for e in response["evaluations"]}

    async def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None,
        properties: Attributes | None,
    ) -> bool:
        try:
            await self._lane.call(
                fastlane.track_request(key, traffic_type, event_type, value, properties)
            )
        except LaneError as err:
            self._fallbacks.record_code("track", err.code, err.details)
            return False
        return True

    async def close(self) -> None:
        await self._lane.close()


class Client:
    """`Client("127.0.0.1:8013")`, `Client("unix:///run/fader/fader.sock")` or, for the
    msgpack fast lane, `Client("fastlane:///run/fader/fastlane.sock")`."""

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
        return self._fallbacks.count

    async def get_treatment(
        self,
        key: str,
        flag: str,
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> str:
        result = await self.evaluate(key, flag, bucketing_key=bucketing_key, attributes=attributes)
        return result.treatment

    async def get_treatment_with_config(
        self,
        key: str,
        flag: str,
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> tuple[str, str | None]:
        result = await self.evaluate(key, flag, bucketing_key=bucketing_key, attributes=attributes)
        return result.treatment, result.config

    async def get_treatments(
        self,
        key: str,
        flags: Iterable[str],
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> dict[str, str]:
        names = _common.flag_list(flags)
        return await self._transport.treatments(key, names, bucketing_key, attributes)

    async def evaluate(
        self,
        key: str,
        flag: str,
        *,
        bucketing_key: str | None = None,
        attributes: Attributes | None = None,
    ) -> Result:
        return await self._transport.evaluate(key, flag, bucketing_key, attributes)

    async def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None = None,
        properties: Attributes | None = None,
    ) -> bool:
        return await self._transport.track(key, traffic_type, event_type, value, properties)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
