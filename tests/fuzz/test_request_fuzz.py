"""Fuzzing the gRPC request paths: every request is answered or refused with a reason.

Random fader.v1 requests (random keys, flag names, flag sets, typed attributes of every kind,
and messages parsed from random bytes) go through fader.v1's Lookups and Track's validation,
thousands of them, and a smaller share through a real grpc.aio server: the answer is a
response or a BadRequest / INVALID_ARGUMENT naming the field, never an internal error.
flagd's Resolve methods get random evaluation contexts on the same server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as flagd
from fader.pb.flagd.evaluation.v1 import evaluation_pb2_grpc as flagd_grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from sidecar.api.fader_v1 import Lookups, event_from_request
from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest
from sidecar.delivery.store import Store
from sidecar.limits import RequestLimits
from sidecar.telemetry.metrics import Metrics
from tests.core.builders import core_for
from tests.fuzz.fuzzing import fuzz_settings
from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    loopback_settings,
    running_sidecar,
)

DIRECT_INPUTS = 800
SERVER_INPUTS = 150
FLAGS = ("new-checkout", "kill-switch-demo", "beta-banner", "pricing-tier", "ui-theme")


texts = st.one_of(
    st.sampled_from(("", "user-1", "a" * 251, "a" * 1025, *FLAGS)), st.text(max_size=40)
)


@st.composite
def attribute_values(draw: st.DrawFn) -> pb.AttributeValue:
    kind = draw(st.sampled_from(("none", "string", "int", "double", "bool", "list", "time")))
    value = pb.AttributeValue()
    if kind == "string":
        value.string_value = draw(texts)
    elif kind == "int":
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "double":
        value.double_value = draw(st.floats())
    elif kind == "bool":
        value.bool_value = draw(st.booleans())
    elif kind == "list":
        value.string_list_value.values.extend(draw(st.lists(texts, max_size=5)))
    elif kind == "time":
        value.timestamp_value.seconds = draw(st.integers(-(2**35), 2**35))
        value.timestamp_value.nanos = draw(st.integers(0, 999_999_999))
    return value


attribute_maps = st.dictionaries(texts, attribute_values(), max_size=6)


@st.composite
def treatment_requests(draw: st.DrawFn) -> pb.GetTreatmentRequest:
    return pb.GetTreatmentRequest(
        key=draw(texts),
        flag=draw(texts),
        bucketing_key=draw(texts),
        attributes=draw(attribute_maps),
    )


@st.composite
def treatments_requests(draw: st.DrawFn) -> pb.GetTreatmentsRequest:
    return pb.GetTreatmentsRequest(
        key=draw(texts),
        flags=draw(st.lists(texts, max_size=6)),
        flag_sets=draw(st.lists(texts, max_size=3)),
        bucketing_key=draw(texts),
        attributes=draw(attribute_maps),
    )


@st.composite
def batch_requests(draw: st.DrawFn) -> pb.EvaluateBatchRequest:
    items = [
        pb.BatchItem(key=draw(texts), flag=draw(texts), attributes=draw(attribute_maps))
        for _ in range(draw(st.integers(0, 4)))
    ]
    return pb.EvaluateBatchRequest(items=items)


@st.composite
def track_requests(draw: st.DrawFn) -> pb.TrackRequest:
    request = pb.TrackRequest(
        key=draw(texts),
        traffic_type=draw(texts),
        event_type=draw(st.one_of(texts, st.just("checkout.completed"))),
        properties=draw(attribute_maps),
    )
    if draw(st.booleans()):
        request.value = draw(st.floats())
    return request


@pytest.fixture(scope="module")
def lookups() -> Lookups:
    store = Store()
    store.swap(demo_snapshot())
    limits = RequestLimits(max_attributes=4, max_batch_items=8)
    return Lookups(core_for(store, metrics=Metrics(lambda: None), limits=limits))


def _answer(lookups: Lookups, request: Any) -> bool:
    """True when answered, False when refused with BadRequest; anything else fails."""
    try:
        if isinstance(request, pb.GetTreatmentRequest):
            assert lookups.get_treatment(request).evaluation.treatment
        elif isinstance(request, pb.GetTreatmentsRequest):
            lookups.get_treatments(request)
        elif isinstance(request, pb.EvaluateBatchRequest):
            lookups.evaluate_batch(request)
        else:
            event_from_request(request, AttributePolicy(4))
    except BadRequest as err:
        assert str(err), "a refusal must say why"
        return False
    return True


requests = st.one_of(
    treatment_requests(), treatments_requests(), batch_requests(), track_requests()
)


def test_structured_requests(lookups: Lookups) -> None:
    outcomes: list[bool] = []

    @fuzz_settings(DIRECT_INPUTS)
    @given(requests)
    def run(request: Any) -> None:
        outcomes.append(_answer(lookups, request))

    run()
    assert len(outcomes) >= DIRECT_INPUTS and any(outcomes) and not all(outcomes)


def test_requests_from_damaged_bytes(lookups: Lookups) -> None:
    """Valid requests' wire bytes with a flipped byte, cut short or with bytes appended."""
    parsed: list[bool] = []

    @fuzz_settings(DIRECT_INPUTS)
    @given(requests, st.data())
    def run(request: Any, data: st.DataObject) -> None:
        wire = bytearray(request.SerializeToString())
        operation = data.draw(st.sampled_from(("flip", "cut", "append")))
        if operation == "append" or not wire:
            wire += data.draw(st.binary(min_size=1, max_size=20))
        elif operation == "cut":
            del wire[data.draw(st.integers(0, len(wire) - 1)) :]
        else:
            wire[data.draw(st.integers(0, len(wire) - 1))] ^= data.draw(st.integers(1, 255))
        try:
            damaged = type(request).FromString(bytes(wire))
        except DecodeError:
            parsed.append(False)  # gRPC's deserializer refuses it before any handler runs
            return
        parsed.append(True)
        _answer(lookups, damaged)

    run()
    assert parsed.count(True) > DIRECT_INPUTS // 10


@pytest.fixture(scope="module")
def server() -> Iterator[RunningSidecar]:
    settings = loopback_settings(max_attributes=4, max_batch_items=8, mgmt_listen=None)
    with running_sidecar(settings, demo_snapshot()) as running:
        yield running


def test_real_server(server: RunningSidecar) -> None:
    codes: list[grpc.StatusCode] = []
    with grpc.insecure_channel(server.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        calls = {
            pb.GetTreatmentRequest: stub.GetTreatment,
            pb.GetTreatmentsRequest: stub.GetTreatments,
            pb.EvaluateBatchRequest: stub.EvaluateBatch,
            pb.TrackRequest: stub.Track,
        }

        @fuzz_settings(SERVER_INPUTS)
        @given(requests)
        def run(request: Any) -> None:
            try:
                calls[type(request)](request, timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                # a valid event is refused too: this sidecar has no collector to keep it
                kept_nowhere = isinstance(request, pb.TrackRequest) and (
                    err.code() == grpc.StatusCode.FAILED_PRECONDITION
                )
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT or kept_nowhere, err
                assert err.details()
                codes.append(err.code())

        run()
        # the server still answers a plain lookup after all that
        answer = stub.GetTreatment(pb.GetTreatmentRequest(key="u", flag="new-checkout"), timeout=5)
        assert answer.evaluation.treatment
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.INVALID_ARGUMENT in codes


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**70), 2**70)
    | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=6,
)
FLAGD_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.DATA_LOSS,
}


def test_flagd_contexts_on_a_real_server(server: RunningSidecar) -> None:
    """Random flagd evaluation contexts (any JSON, NaN and huge numbers included) and flag
    keys, through every typed Resolve method: flagd's own codes, never an internal error."""
    codes: list[grpc.StatusCode] = []
    with grpc.insecure_channel(server.tcp_target) as channel:
        stub = flagd_grpc.ServiceStub(channel)
        methods = {
            "ResolveBoolean": (stub.ResolveBoolean, flagd.ResolveBooleanRequest),
            "ResolveString": (stub.ResolveString, flagd.ResolveStringRequest),
            "ResolveInt": (stub.ResolveInt, flagd.ResolveIntRequest),
            "ResolveFloat": (stub.ResolveFloat, flagd.ResolveFloatRequest),
            "ResolveObject": (stub.ResolveObject, flagd.ResolveObjectRequest),
        }

        @fuzz_settings(SERVER_INPUTS)
        @given(
            st.sampled_from(sorted(methods)),
            texts,
            st.dictionaries(texts, json_values, max_size=5),
            st.one_of(st.none(), texts),
        )
        def run(method: str, flag_key: str, values: dict[str, Any], key: str | None) -> None:
            call, message = methods[method]
            context = struct_pb2.Struct()
            context.update(values if key is None else values | {"targetingKey": key})
            try:
                call(message(flag_key=flag_key, context=context), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                assert err.code() in FLAGD_CODES, (err.code(), err.details())
                assert err.details()
                codes.append(err.code())

        run()
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.INVALID_ARGUMENT in codes
