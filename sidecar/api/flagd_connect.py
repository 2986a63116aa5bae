"""flagd's evaluation API over the Connect protocol (HTTP/1.1), on the OFREP listener.

flagd serves its evaluation API with connect-go, so one port speaks gRPC, gRPC-Web and
Connect, and some providers use Connect: the Go flagd provider's RPC mode posts
`/flagd.evaluation.v1.Service/ResolveBoolean` over plain HTTP/1.1 and reads the EventStream
as a Connect server stream. Fader's gRPC port speaks gRPC only (HTTP/2), so Connect is served
on the HTTP listener Fader already has, `--ofrep-listen`: point such a provider's port there.

The same FlagdService objects as the gRPC lane answer (`sidecar.api.flagd_service`): the same
decoding, evaluation core, mapping and errors, only the framing differs.

- Unary: `Content-Type: application/proto` (or `application/json`), the message as the body;
  an error is an HTTP status with `{"code": "not_found", "message": ...}` (Connect's codes).
- EventStream (server streaming): `application/connect+proto` (or `+json`); the request and
  each response are enveloped (a flags byte, a 4-byte big-endian length, the message), and the
  stream ends with an end-of-stream envelope (flags 0x02) holding `{}` or `{"error": ...}`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from sidecar.api.flagd_service import RESOLVES, FlagdService, FlagdServiceV1
from sidecar.core.refusals import BadRequest, Refusal
from sidecar.plumbing.http import Request, Response

PREFIXES = {"/flagd.evaluation.v1.Service/": "v1", "/flagd.evaluation.v2.Service/": "v2"}
SELECTOR_HEADER = "flagd-selector"
END_STREAM = 0x02

# Connect's name and HTTP status for each gRPC status name a refusal carries.
CONNECT_CODES: dict[str, tuple[str, int]] = {
    "INVALID_ARGUMENT": ("invalid_argument", 400),
    "NOT_FOUND": ("not_found", 404),
    "DATA_LOSS": ("data_loss", 500),
    "UNKNOWN": ("unknown", 500),
    "UNAVAILABLE": ("unavailable", 503),
    "RESOURCE_EXHAUSTED": ("resource_exhausted", 429),
    "UNIMPLEMENTED": ("unimplemented", 404),
    "UNAUTHENTICATED": ("unauthenticated", 401),
}


def is_connect(path: str) -> bool:
    return any(path.startswith(prefix) for prefix in PREFIXES)


def _error_body(code: str, message: str) -> dict[str, str]:
    return {"code": CONNECT_CODES.get(code, ("unknown", 500))[0], "message": message}


def unary_error(code: str, message: str) -> Response:
    status = CONNECT_CODES.get(code, ("unknown", 500))[1]
    body = json.dumps(_error_body(code, message)).encode()
    return Response(status, body, [("Content-Type", "application/json")])


class FlagdConnect:
    """Routes Connect requests to the flagd services of each version."""

    def __init__(self, services: Mapping[str, FlagdService]) -> None:
        self._services = services

    def handle(self, request: Request) -> Response:
        version = next(v for prefix, v in PREFIXES.items() if request.path.startswith(prefix))
        method = request.path.rsplit("/", 1)[1]
        service = self._services[version]
        if request.method != "POST":
            return unary_error("UNIMPLEMENTED", "Connect calls are POST requests")
        content_type = request.headers.get("content-type", "application/proto").split(";")[0]
        if method == "EventStream":
            return self._event_stream(service, request, content_type)
        as_json = content_type == "application/json"
        try:
            answer = self._unary(service, method, request, as_json)
        except Refusal as err:
            return unary_error(err.code, str(err))
        except (DecodeError, json_format.ParseError) as err:
            return unary_error("INVALID_ARGUMENT", f"the request is not a {method} message: {err}")
        if as_json:
            body = json_format.MessageToJson(answer).encode()
            return Response(200, body, [("Content-Type", "application/json")])
        return Response(200, answer.SerializeToString(), [("Content-Type", "application/proto")])

    def _unary(
        self, service: FlagdService, method: str, request: Request, as_json: bool
    ) -> Message:
        header = request.headers.get(SELECTOR_HEADER)
        pb = service.pb
        if method == "ResolveAll" and isinstance(service, FlagdServiceV1):
            everything = pb.ResolveAllRequest()
            _decode(everything, request.body, as_json)
            return service.resolve_all(everything, header)
        if method not in RESOLVES:
            raise _Unimplemented(f"no method {method}")
        response_name, convert, kind = RESOLVES[method]
        message = _decode(getattr(pb, f"{method}Request")(), request.body, as_json)
        answer: Message = service.answer(message, header, getattr(pb, response_name), convert, kind)
        return answer

    def _event_stream(self, service: FlagdService, request: Request, content_type: str) -> Response:
        as_json = content_type == "application/connect+json"
        header = request.headers.get(SELECTOR_HEADER)
        kind = "application/connect+json" if as_json else "application/connect+proto"
        return Response(
            200, headers=[("Content-Type", kind)], stream=_events(service, header, as_json)
        )


class _Unimplemented(Refusal):
    code = "UNIMPLEMENTED"
    http_status = 404


def _decode(message: Message, body: bytes, as_json: bool) -> Message:
    if as_json:
        if json_depth_exceeds(body):  # json_format parses with the recursive json module
            raise BadRequest(f"the request nests more than {MAX_DEPTH} levels deep")
        try:
            text = body.decode() if body else "{}"
        except UnicodeDecodeError:
            raise BadRequest("the request body is not UTF-8 JSON") from None
        json_format.Parse(text, message)
    else:
        message.ParseFromString(body)
    return message


def envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _enveloped(message: Any, as_json: bool) -> bytes:
    if as_json:
        return envelope(0, json_format.MessageToJson(message).encode())
    return envelope(0, message.SerializeToString())


async def _events(service: FlagdService, header: str | None, as_json: bool) -> AsyncIterator[bytes]:
    """The EventStream's messages, enveloped, then the end of the stream."""
    end: dict[str, Any] = {}
    try:
        async for kind, data in service.events(header):
            message = service.event_message(kind, data)
            # the same bytes for every stream a swap sends this message to
            yield service.shared_for(message, as_json, partial(_enveloped, message, as_json))
    except Refusal as err:
        end = {"error": _error_body(err.code, str(err))}
    yield envelope(END_STREAM, json.dumps(end).encode())
