"""Registers servicers with per-method gRPC metrics, without a server interceptor.

A grpc.aio interceptor runs Python code for every call just to decide how to wrap the handler,
then wraps it again; here each method handler is wrapped once, at registration. The handlers
are registered through `add_registered_method_handlers`, which keeps gRPC's fast path for known
method names.

A request that does not decode (garbage bytes, a string that is not UTF-8) is answered
INVALID_ARGUMENT saying why. Left to gRPC, the decoding error escaped as the servicer's own:
UNKNOWN, and an ERROR traceback in the log for every such request.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from sidecar.plumbing.undecodable import Malformed, deserializer
from sidecar.telemetry.metrics import Metrics, RpcKey

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def register(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, metrics: Metrics | None
) -> None:
    """Adds every method of `service` implemented by `servicer` (unary, server-streaming, or
    bidirectional when `metrics` is None).

    `metrics=None` registers the bare handlers; the benchmark uses it to price the metrics.
    Methods named in the servicer's `wire_methods` get no (de)serializers: they take the
    request's bytes and answer the response's (a lane that decodes and encodes itself).
    """
    handlers = {}
    wire: frozenset[str] = getattr(servicer, "wire_methods", frozenset())
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        if metrics is not None:
            key = metrics.register_rpc(service.full_name, method.name, _rpc_type(method))
            behavior = _timed(method, behavior, metrics, key)
        else:
            behavior = _checked(method, behavior)
        handlers[method.name] = _handler(method, behavior, method.name in wire)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _rpc_type(method: MethodDescriptor) -> str:
    if method.client_streaming:
        return "bidi_stream" if method.server_streaming else "client_stream"
    return "server_stream" if method.server_streaming else "unary"


async def _refuse(request: Malformed, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)


def _handler(method: MethodDescriptor, behavior: Any, wire: bool) -> grpc.RpcMethodHandler:
    deserialize: Callable[[bytes], Any] | None = None
    serialize: Callable[[Any], bytes] | None = None
    if not wire:
        deserialize = deserializer(GetMessageClass(method.input_type))
        serialize = GetMessageClass(method.output_type).SerializeToString
    if method.client_streaming:
        if not method.server_streaming:
            raise NotImplementedError(f"{method.full_name}: client streaming is not used yet")
        return grpc.stream_stream_rpc_method_handler(
            behavior, request_deserializer=deserialize, response_serializer=serialize
        )
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(
            behavior, request_deserializer=deserialize, response_serializer=serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=deserialize, response_serializer=serialize
    )


def _checked(method: MethodDescriptor, behavior: Any) -> Any:
    """`behavior` refusing undecodable requests, for servicers registered without metrics.

    Besides Fader's own shapes (a coroutine, an async generator), it takes the two that
    grpcio's health and reflection servicers have: a server stream written with
    `context.write` by a coroutine (health Watch), and a bidirectional stream (reflection).
    """
    if method.client_streaming:
        return _checked_requests(behavior)
    if method.server_streaming and inspect.isasyncgenfunction(behavior):
        stream: StreamBehavior = behavior

        async def handle_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if type(request) is Malformed:
                await _refuse(request, context)
            async for response in stream(request, context):
                yield response

        return handle_stream
    unary: UnaryBehavior = behavior

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if type(request) is Malformed:
            await _refuse(request, context)
        return await unary(request, context)

    return handle


def _checked_requests(behavior: Any) -> Any:
    """A request-stream `behavior` (an async generator) whose stream stops the call at a
    message that does not decode; the behaviour never sees it."""

    async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async def decoded() -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is Malformed:
                    await _refuse(request, context)
                yield request

        async for response in behavior(decoded(), context):
            yield response

    return handle


def _timed(method: MethodDescriptor, behavior: Any, metrics: Metrics, key: RpcKey) -> Any:
    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: timed request streams are not used yet")
    if method.server_streaming:
        return _timed_stream(behavior, metrics, key)
    return _timed_unary(behavior, metrics, key)


def _timed_unary(behavior: UnaryBehavior, metrics: Metrics, key: RpcKey) -> UnaryBehavior:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = metrics.shard().rpc(key)
        stats.started += 1
        start = perf_counter()
        try:
            if type(request) is Malformed:
                await _refuse(request, context)
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
            if type(request) is Malformed:
                await _refuse(request, context)
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
