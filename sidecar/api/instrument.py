"""Registers servicers with per-method gRPC metrics, without a server interceptor.

A grpc.aio interceptor runs Python code for every call just to decide how to wrap the handler,
then wraps it again; here each method handler is wrapped once, at registration. The handlers
are registered through `add_registered_method_handlers`, which keeps gRPC's fast path for known
method names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from sidecar.telemetry.metrics import Metrics, RpcKey

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def register(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, metrics: Metrics | None
) -> None:
    """Adds every method of `service` implemented by `servicer` (unary or server-streaming).

    `metrics=None` registers the bare handlers; the benchmark uses it to price the metrics.
    """
    handlers = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        if metrics is not None:
            key = metrics.register_rpc(service.full_name, method.name, _rpc_type(method))
            behavior = _timed(method, behavior, metrics, key)
        handlers[method.name] = _handler(method, behavior)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _rpc_type(method: MethodDescriptor) -> str:
    if method.client_streaming:
        return "bidi_stream" if method.server_streaming else "client_stream"
    return "server_stream" if method.server_streaming else "unary"


def _handler(method: MethodDescriptor, behavior: Any) -> grpc.RpcMethodHandler:
    deserialize = GetMessageClass(method.input_type).FromString
    serialize = GetMessageClass(method.output_type).SerializeToString
    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: client streaming is not used yet")
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(
            behavior, request_deserializer=deserialize, response_serializer=serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=deserialize, response_serializer=serialize
    )


def _timed(method: MethodDescriptor, behavior: Any, metrics: Metrics, key: RpcKey) -> Any:
    if method.server_streaming:
        return _timed_stream(behavior, metrics, key)
    return _timed_unary(behavior, metrics, key)


def _timed_unary(behavior: UnaryBehavior, metrics: Metrics, key: RpcKey) -> UnaryBehavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = metrics.shard().rpc(key)
        stats.started += 1
        start = perf_counter()
        try:
            response = await behavior(request, context)
        except BaseException as err:
            stats.finish(_code(err, context), perf_counter() - start)
            raise
        stats.finish("OK", perf_counter() - start)
        return response

    return handle


def _timed_stream(behavior: StreamBehavior, metrics: Metrics, key: RpcKey) -> StreamBehavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        stats = metrics.shard().rpc(key)
        stats.started += 1
        start = perf_counter()
        code = "OK"
        try:
            async for response in behavior(request, context):
                yield response
        except BaseException as err:
            code = _code(err, context)
            raise
        finally:
            stats.finish(code, perf_counter() - start)

    return handle


def _code(err: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status a failed handler ends with: the aborted code, CANCELLED, or UNKNOWN."""
    if isinstance(err, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        return "UNKNOWN"
    return str(code.name)
