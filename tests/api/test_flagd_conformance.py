"""The flagd testbed's evaluator suite (tests/vectors/flagd/evaluator: 125 cases with the
fractional v2 rows, v1 left out) through Fader's flagd.evaluation.v2 gRPC service: the
testbed's flags file is loaded as it is, as a whole snapshot, into a real sidecar, and each
case is resolved over loopback gRPC and read back as an OpenFeature provider reads it (a
status code is an error code, an absent value is the caller's fallback)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from fader.snapshot.loader import load_file
from google.protobuf import json_format

from tests.fader.flagd.gherkin import Case, Check, check_of, evaluator_cases
from tests.integration.harness import loopback_settings, running_sidecar
from tests.vectors import flagd_vector

CASES = evaluator_cases("v2")
ERROR_CODES = {
    grpc.StatusCode.NOT_FOUND: "FLAG_NOT_FOUND",
    grpc.StatusCode.INVALID_ARGUMENT: "TYPE_MISMATCH",
    grpc.StatusCode.DATA_LOSS: "PARSE_ERROR",
}
METHODS = {
    "boolean": ("ResolveBoolean", v2.ResolveBooleanRequest),
    "string": ("ResolveString", v2.ResolveStringRequest),
    "integer": ("ResolveInt", v2.ResolveIntRequest),
    "float": ("ResolveFloat", v2.ResolveFloatRequest),
    "object": ("ResolveObject", v2.ResolveObjectRequest),
}


@pytest.fixture(scope="module")
def stub() -> Iterator[v2_grpc.ServiceStub]:
    snapshot = load_file(flagd_vector("evaluator/flags/testkit-flags.json"))
    with (
        running_sidecar(loopback_settings(), snapshot) as running,
        grpc.insecure_channel(running.tcp_target) as channel,
    ):
        yield v2_grpc.ServiceStub(channel)


def resolve(stub: v2_grpc.ServiceStub, check: Check) -> dict[str, Any]:
    """What an OpenFeature provider makes of the answer: value, reason, error code, metadata."""
    method, request_type = METHODS[check.kind]
    request: Any = request_type(flag_key=check.flag)
    request.context.update(check.context)
    try:
        response = getattr(stub, method)(request, timeout=5)
    except grpc.RpcError as err:
        code = ERROR_CODES.get(err.code(), "GENERAL")
        return {"value": check.fallback, "reason": "ERROR", "error_code": code, "metadata": {}}
    value: Any = check.fallback
    if response.HasField("value"):
        value = response.value
        if check.kind == "object":
            value = json_format.MessageToDict(response.value)
    return {
        "value": value,
        "reason": response.reason,
        "error_code": None,
        "metadata": json_format.MessageToDict(response.metadata),
    }


def test_the_suite_is_complete() -> None:
    assert len(CASES) == 125


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_evaluator_case(stub: v2_grpc.ServiceStub, case: Case) -> None:
    check = check_of(case)
    answer = resolve(stub, check)
    if check.expect_value:
        assert answer["value"] == check.value
        assert type(answer["value"]) is type(check.value) or check.kind == "object"
    if check.reason is not None:
        assert answer["reason"] == check.reason
    if check.error_code is not None:
        assert answer["error_code"] == check.error_code
    if check.metadata is not None:
        assert answer["metadata"] == check.metadata
