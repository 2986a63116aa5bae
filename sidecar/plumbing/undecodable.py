"""Requests that do not decode are refused with INVALID_ARGUMENT, on every gRPC server.

Left to gRPC, bytes that do not decode into the request message fail inside its
deserializer: the caller gets INTERNAL "Exception deserializing request!" (thread-pool
server) or UNKNOWN (grpc.aio), and the log an ERROR traceback, for every such request.
Fader's servers take requests from other programs and from operators' tools, so they answer
INVALID_ARGUMENT saying why.

The deserializer here returns a `Malformed` value instead of raising, and the behaviours
refuse it. `register` builds a thread-pool server's handlers from the service descriptor,
as the generated `add_*Servicer_to_server` functions do (the admin port, the control
plane); `sidecar.api.instrument` does the same for the grpc.aio server. A stream of
requests is refused at the first message that does not decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass


class Malformed:
    """What the deserializer hands the behaviour for bytes that do not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def register(server: grpc.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Adds every method of `service` (any streaming kind) implemented by `servicer`."""
    handlers = {
        method.name: _handler(method, getattr(servicer, method.name)) for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def deserializer(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    parse = message_class.FromString

    def deserialize(data: bytes) -> Message | Malformed:
        try:
            return parse(data)
        except DecodeError as err:
            return Malformed(f"the request does not decode: {err}")

    return deserialize


def _handler(method: MethodDescriptor, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    options = {
        "request_deserializer": deserializer(GetMessageClass(method.input_type)),
        "response_serializer": GetMessageClass(method.output_type).SerializeToString,
    }
    if method.client_streaming:
        streamed = _checked_stream(behavior)
        if method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(streamed, **options)
        return grpc.stream_unary_rpc_method_handler(streamed, **options)
    single = _checked(behavior)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(single, **options)
    return grpc.unary_unary_rpc_method_handler(single, **options)


def _refuse(request: Malformed, context: grpc.ServicerContext) -> NoReturn:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker


def _checked(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    """A one-request behaviour (its result a response or an iterator of them)."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if type(request) is Malformed:
            _refuse(request, context)
        return behavior(request, context)

    return handle


def _checked_stream(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    """A request-stream behaviour, whose stream stops the call at a message that does not
    decode (the behaviour never sees it)."""

    def handle(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        def decoded() -> Iterator[Any]:
            for request in requests:
                if type(request) is Malformed:
                    _refuse(request, context)
                yield request

        return behavior(decoded(), context)

    return handle
