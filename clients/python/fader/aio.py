"""The asyncio client: `fader.aio.Client`, the twin of `fader.Client` with awaitable methods.

Create it inside a running event loop (gRPC's asyncio channel belongs to the loop it is
created on). It answers "control" on failure exactly like the sync client. In
`mode="in-process"` lookups answered locally never await anything; the snapshot stream and
the impressions run on the same background threads as the sync client's (`fader._inprocess`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

import grpc

from fader import _calls, _common
from fader._calls import Call
from fader._common import Attributes, CallFailed
from fader._inprocess import DEFAULT_EXIT_TIMEOUT, DEFAULT_MAX_STALENESS, InProcess, start
from fader._lane import AsyncLane, socket_path
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.result import Result

T = TypeVar("T")

__all__ = ["Client", "Result"]


class _Grpc:
    """fader.v1 over one asyncio gRPC channel (TCP or unix://)."""

    def __init__(self, target: str, timeout: float) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_common.channel_options(target))
        stub = pb_grpc.EvaluationServiceStub(self._channel)
        self._methods = {name: getattr(stub, name) for name in _common.METHODS}
        self._timeout = timeout

    async def send(self, call: Call[Any]) -> Any:
        try:
            return await self._methods[call.method](call.request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise CallFailed(err.code(), err.details()) from None

    async def close(self) -> None:
        await self._channel.close()


class Client:
    """`Client("127.0.0.1:8013")`, `Client("unix:///run/fader/fader.sock")` or, for the
    msgpack fast lane, `Client("fastlane:///run/fader/fastlane.sock")`; `mode`,
    `max_staleness` and `exit_timeout` as for `fader.Client`."""

    def __init__(
        self,
        target: str = "127.0.0.1:8013",
        *,
        timeout: float = _common.DEFAULT_TIMEOUT,
        mode: str = "remote",
        max_staleness: float = DEFAULT_MAX_STALENESS,
        exit_timeout: float = DEFAULT_EXIT_TIMEOUT,
    ):
        self._fallbacks = _common.Fallbacks()
        path = socket_path(target)
        self._in_process = start(target, path, mode, max_staleness, exit_timeout)
        self._transport: _Grpc | AsyncLane = (
            _Grpc(target, timeout) if path is None else AsyncLane(path, timeout)
        )
        self._calls = _calls.GRPC if path is None else _calls.FAST_LANE

    @property
    def fallback_count(self) -> int:
        return self._fallbacks.count

    @property
    def in_process(self) -> InProcess | None:
        return self._in_process

    async def get_treatment(
        self,
        key: str,
        flag: str,
        attributes: Attributes | None = None,
        *,
        bucketing_key: str | None = None,
    ) -> str:
        in_process = self._in_process
        if in_process is not None:
            local = in_process.local
            if local is not None:
                try:
                    return local.decide(key, flag, bucketing_key, attributes)[0]
                except CallFailed as failure:
                    return self._fallbacks.record("GetTreatment", failure).treatment
            in_process.remote_lookups += 1
        return await self._run(self._calls.treatment(key, flag, bucketing_key, attributes))

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
        in_process = self._in_process
        if in_process is not None:
            local = in_process.local
            if local is not None:
                try:
                    return local.treatments(key, names, bucketing_key, attributes)
                except CallFailed as failure:
                    control = self._fallbacks.record("GetTreatments", failure)
                    return dict.fromkeys(names, control.treatment)
            in_process.remote_lookups += 1
        return await self._run(self._calls.treatments(key, names, bucketing_key, attributes))

    async def evaluate(
        self,
        key: str,
        flag: str,
        *,
        bucketing_key: str | None = None,
        attributes: Attributes | None = None,
    ) -> Result:
        in_process = self._in_process
        if in_process is not None:
            local = in_process.local
            if local is not None:
                try:
                    return local.result(key, flag, bucketing_key, attributes)
                except CallFailed as failure:
                    return self._fallbacks.record("GetTreatment", failure)
            in_process.remote_lookups += 1
        return await self._run(self._calls.evaluate(key, flag, bucketing_key, attributes))

    async def track(
        self,
        key: str,
        traffic_type: str,
        event_type: str,
        value: float | None = None,
        properties: Attributes | None = None,
    ) -> bool:
        return await self._run(self._calls.track(key, traffic_type, event_type, value, properties))

    async def _run(self, call: Call[T]) -> T:
        """Sends `call`; a failure is counted, logged, and answered like Split's SDKs do."""
        try:
            response = await self._transport.send(call)
        except CallFailed as failure:
            return call.failed(self._fallbacks.record(call.method, failure))
        return call.read(response)

    async def close(self) -> None:
        """Closes the channel; in-process mode first sends what it recorded (bounded, on a
        worker thread so that the loop goes on meanwhile)."""
        if self._in_process is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._in_process.close)
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
