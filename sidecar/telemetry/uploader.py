"""Sends one batch to the collector and says what its answer means for the batch.

Status codes fall in three groups (documented in proto/fader/v1/telemetry.proto): stored
(OK), worth retrying (the collector is down, overloaded, or not yet trusting us: a token
being rotated must not cost a day of impressions), or refused for good (the batch itself is
wrong, or the collector cannot take this kind of data): only the last is ever dropped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc
from fader.pb.fader.v1 import telemetry_pb2 as pb

from sidecar.plumbing.channels import ChannelSecurity

PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.NOT_FOUND,
    }
)


# Codes that say the collector takes no telemetry at all (not that one batch is wrong):
# every batch after this one will be refused alike.
REFUSES_ALL = frozenset({grpc.StatusCode.UNIMPLEMENTED.name})


class Verdict(enum.Enum):
    STORED = "stored"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    code: str  # the gRPC status code name
    detail: str = ""


# A batch is bounded by --telemetry-batch-bytes (estimated); the wire form may be larger.
MAX_SEND_BYTES = 64 * 1024 * 1024
# TelemetryService.Upload, called with the request's bytes (batches.to_request writes them)
_SERVICE = pb.DESCRIPTOR.services_by_name["TelemetryService"]
UPLOAD_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Upload'].name}"


class Uploader:
    """One channel to the collector at ``address``, opened at the first upload; the token
    is read for every upload, so a rotated one is used without a restart."""

    def __init__(
        self, address: str, timeout: float, security: ChannelSecurity | None = None
    ) -> None:
        self.address = address
        self._security = security or ChannelSecurity()
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._upload: grpc.aio.UnaryUnaryMultiCallable | None = None

    async def send(self, request: bytes) -> Answer:
        """Uploads one UploadRequest, given as its wire bytes (no serializer on the call)."""
        if self._upload is None:
            options = [("grpc.max_send_message_length", MAX_SEND_BYTES)]
            self._channel = self._security.aio_channel(self.address, options)
            self._upload = self._channel.unary_unary(
                UPLOAD_METHOD, response_deserializer=pb.UploadResponse.FromString
            )
        try:
            metadata = self._security.metadata()
        except OSError as err:
            return Answer(Verdict.RETRY, "TOKEN_UNREADABLE", str(err))
        try:
            await self._upload(request, timeout=self._timeout, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            code = err.code()
            verdict = Verdict.REFUSED if code in PERMANENT else Verdict.RETRY
            return Answer(verdict, code.name, err.details() or "")
        except (grpc.RpcError, OSError, ValueError) as err:  # the channel itself failed
            return Answer(Verdict.RETRY, "CLIENT_ERROR", str(err))
        return Answer(Verdict.STORED, "OK")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._upload = None
