"""Sends one batch to the collector and says what its answer means for the batch.

Status codes fall in three groups (documented in proto/fader/v1/telemetry.proto): stored
(OK), worth retrying (the collector is down, overloaded, or not yet trusting us: a token
being rotated must not cost a day of impressions), or refused for good (the batch itself is
wrong, or the collector cannot take this kind of data): only the last is ever dropped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import grpc
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc

PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.NOT_FOUND,
    }
)


class Verdict(enum.Enum):
    STORED = "stored"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    code: str  # the gRPC status code name
    detail: str = ""


@dataclass(frozen=True)
class CollectorTarget:
    """Where and how to reach the collector; the token file is read for every upload, so a
    rotated token is used without a restart."""

    address: str
    root_certificates: bytes | None = None
    token_file: Path | None = None

    def channel(self) -> grpc.aio.Channel:
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        if self.root_certificates is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        credentials = grpc.ssl_channel_credentials(self.root_certificates)
        return grpc.aio.secure_channel(self.address, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        token = self.token_file.read_text(encoding="utf-8").strip()
        return (("authorization", f"Bearer {token}"),)


class Uploader:
    def __init__(self, target: CollectorTarget, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub: telemetry_pb2_grpc.TelemetryServiceStub | None = None

    async def send(self, request: pb.UploadRequest) -> Answer:
        if self._stub is None:
            self._channel = self._target.channel()
            self._stub = telemetry_pb2_grpc.TelemetryServiceStub(self._channel)
        try:
            metadata = self._target.metadata()
        except OSError as err:
            return Answer(Verdict.RETRY, "TOKEN_UNREADABLE", str(err))
        try:
            await self._stub.Upload(request, timeout=self._timeout, metadata=metadata)
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
            self._stub = None
