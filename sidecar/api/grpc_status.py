"""Ends a grpc.aio call with the status a refusal names (`sidecar.core.refusals`): the one
place where the gRPC lanes (fader.v1 and flagd) turn a refusal into a status."""

from __future__ import annotations

from typing import NoReturn

import grpc

from sidecar.core.refusals import Refusal


async def abort(context: grpc.aio.ServicerContext, err: Refusal) -> NoReturn:
    """Aborts with `err.code` as the status and its message as details."""
    await context.abort(grpc.StatusCode[err.code], str(err))
    raise AssertionError("unreachable: grpc.aio abort raises")
