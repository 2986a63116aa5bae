"""fader.v1.EvaluationService over real gRPC, on loopback TCP and on a Unix socket."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar

TIMEOUT = 5.0


@pytest.fixture
def stub(target: str) -> Iterator[pb_grpc.EvaluationServiceStub]:
    with grpc.insecure_channel(target) as channel:
        yield pb_grpc.EvaluationServiceStub(channel)


def attrs(**values: pb.AttributeValue) -> dict[str, pb.AttributeValue]:
    return values


def test_get_treatment_matches_the_engine(
    stub: pb_grpc.EvaluationServiceStub, demo_sidecar: RunningSidecar
) -> None:
    snap = demo_sidecar.store.current
    assert snap is not None
    for flag_name in snap.flag_names():
        for key in ("user-1", "user-2", "alice", "zed"):
            response = stub.GetTreatment(
                pb.GetTreatmentRequest(key=key, flag=flag_name), timeout=TIMEOUT
            )
            expected = snap.evaluate(key, flag_name)
            got = response.evaluation
            assert (got.flag, got.treatment, got.label) == (
                flag_name,
                expected.treatment,
                expected.label,
            )
            assert (got.config if got.HasField("config") else None) == expected.config
            assert got.change_number == expected.change_number
            assert response.version == snap.version


def test_demo_answers(stub: pb_grpc.EvaluationServiceStub) -> None:
    def ask(key: str, flag_name: str, **attributes: pb.AttributeValue) -> pb.Evaluation:
        request = pb.GetTreatmentRequest(key=key, flag=flag_name, attributes=attributes)
        response: pb.GetTreatmentResponse = stub.GetTreatment(request, timeout=TIMEOUT)
        return response.evaluation

    killed = ask("anyone", "kill-switch-demo")
    assert (killed.treatment, killed.label, killed.config) == ("safe", "killed", '{"mode":"safe"}')
    assert ask("alice", "beta-banner").treatment == "on"
    assert ask("nobody-special", "beta-banner").treatment == "off"
    premium = ask(
        "u",
        "pricing-tier",
        plan=pb.AttributeValue(string_value="pro"),
        age=pb.AttributeValue(int_value=30),
    )
    assert (premium.treatment, premium.config) == ("premium", '{"limit":100}')
    assert (
        ask("u", "pricing-tier", plan=pb.AttributeValue(string_value="pro")).treatment == "standard"
    )


def test_bucketing_key_decides_the_bucket(
    stub: pb_grpc.EvaluationServiceStub, demo_sidecar: RunningSidecar
) -> None:
    snap = demo_sidecar.store.current
    assert snap is not None
    for bucketing_key in ("acct-1", "acct-2", "acct-3", "acct-4"):
        request = pb.GetTreatmentRequest(
            key="same-user", flag="new-checkout", bucketing_key=bucketing_key
        )
        got = stub.GetTreatment(request, timeout=TIMEOUT).evaluation.treatment
        assert got == snap.evaluate("same-user", "new-checkout", bucketing_key).treatment


def test_unknown_flag_is_control_not_an_error(stub: pb_grpc.EvaluationServiceStub) -> None:
    response = stub.GetTreatment(
        pb.GetTreatmentRequest(key="k", flag="no-such-flag"), timeout=TIMEOUT
    )
    assert response.evaluation.treatment == "control"
    assert response.evaluation.label == "definition not found"
    assert not response.evaluation.HasField("change_number")
    assert not response.evaluation.HasField("config")


def test_get_treatments_named_flags_in_request_order(stub: pb_grpc.EvaluationServiceStub) -> None:
    request = pb.GetTreatmentsRequest(
        key="alice", flags=["ui-theme", "beta-banner", "nope", "ui-theme"]
    )
    response = stub.GetTreatments(request, timeout=TIMEOUT)
    got = [(e.flag, e.treatment) for e in response.evaluations]
    assert got == [("ui-theme", "classic"), ("beta-banner", "on"), ("nope", "control")]


def test_get_treatments_by_flag_set_and_all(stub: pb_grpc.EvaluationServiceStub) -> None:
    by_set = stub.GetTreatments(
        pb.GetTreatmentsRequest(key="u", flag_sets=["checkout"]), timeout=TIMEOUT
    )
    assert [e.flag for e in by_set.evaluations] == ["kill-switch-demo", "new-checkout"]
    mixed = stub.GetTreatments(
        pb.GetTreatmentsRequest(
            key="u", flags=["ui-theme", "new-checkout"], flag_sets=["checkout"]
        ),
        timeout=TIMEOUT,
    )
    assert [e.flag for e in mixed.evaluations] == ["ui-theme", "new-checkout", "kill-switch-demo"]
    every = stub.GetTreatments(pb.GetTreatmentsRequest(key="u"), timeout=TIMEOUT)
    assert [e.flag for e in every.evaluations] == [
        "beta-banner",
        "kill-switch-demo",
        "new-checkout",
        "pricing-tier",
        "ui-theme",
    ]
    unknown_set = stub.GetTreatments(
        pb.GetTreatmentsRequest(key="u", flag_sets=["nope"]), timeout=TIMEOUT
    )
    assert list(unknown_set.evaluations) == []


def test_evaluate_batch_keeps_item_order(
    stub: pb_grpc.EvaluationServiceStub, demo_sidecar: RunningSidecar
) -> None:
    snap = demo_sidecar.store.current
    assert snap is not None
    items = [
        pb.BatchItem(key=f"user-{i}", flag=("new-checkout", "beta-banner", "missing")[i % 3])
        for i in range(100)
    ]
    response = stub.EvaluateBatch(pb.EvaluateBatchRequest(items=items), timeout=TIMEOUT)
    assert response.version == snap.version
    assert [(e.flag, e.treatment) for e in response.evaluations] == [
        (item.flag, snap.evaluate(item.key, item.flag).treatment) for item in items
    ]
    on = sum(e.treatment == "on" for e in response.evaluations if e.flag == "new-checkout")
    assert 5 < on < 30  # a 50/50 split of 34 keys


def typed_attribute_snapshot() -> Snapshot:
    jan_2024_ms = 1_704_067_200_000
    return build_snapshot(
        snapshot_doc(
            flag(
                "str",
                condition(
                    matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})
                ),
            ),
            flag(
                "int",
                condition(
                    matcher(
                        "EQUAL_TO", "n", unaryNumericMatcherData={"dataType": "NUMBER", "value": 5}
                    )
                ),
            ),
            flag("bool", condition(matcher("EQUAL_TO_BOOLEAN", "beta", booleanMatcherData=True))),
            flag(
                "list",
                condition(
                    matcher(
                        "CONTAINS_ANY_OF_SET", "tags", whitelistMatcherData={"whitelist": ["a"]}
                    )
                ),
            ),
            flag(
                "date",
                condition(
                    matcher(
                        "GREATER_THAN_OR_EQUAL_TO",
                        "signup",
                        unaryNumericMatcherData={"dataType": "DATETIME", "value": jan_2024_ms},
                    )
                ),
            ),
            version=2,
        )
    )


TYPED_CASES = [
    ("str", pb.AttributeValue(string_value="pro"), "on"),
    ("str", pb.AttributeValue(string_value="free"), "off"),
    ("int", pb.AttributeValue(int_value=5), "on"),
    ("int", pb.AttributeValue(double_value=5.0), "off"),  # Split: a float never matches NUMBER
    ("bool", pb.AttributeValue(bool_value=True), "on"),
    ("bool", pb.AttributeValue(bool_value=False), "off"),
    ("list", pb.AttributeValue(string_list_value=pb.StringList(values=["b", "a"])), "on"),
    ("list", pb.AttributeValue(string_list_value=pb.StringList(values=["b"])), "off"),
]
ATTRIBUTE_NAME = {"str": "plan", "int": "n", "bool": "beta", "list": "tags", "date": "signup"}


@pytest.fixture(scope="module")
def typed_stub() -> Iterator[pb_grpc.EvaluationServiceStub]:
    with (
        running_sidecar(loopback_settings(), typed_attribute_snapshot()) as running,
        grpc.insecure_channel(running.tcp_target) as channel,
    ):
        yield pb_grpc.EvaluationServiceStub(channel)


@pytest.mark.parametrize(("flag_name", "value", "expected"), TYPED_CASES)
def test_typed_attributes(
    typed_stub: pb_grpc.EvaluationServiceStub,
    flag_name: str,
    value: pb.AttributeValue,
    expected: str,
) -> None:
    request = pb.GetTreatmentRequest(
        key="k", flag=flag_name, attributes={ATTRIBUTE_NAME[flag_name]: value}
    )
    assert typed_stub.GetTreatment(request, timeout=TIMEOUT).evaluation.treatment == expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime.datetime(2024, 3, 1, tzinfo=datetime.UTC), "on"),
        (datetime.datetime(2023, 12, 31, tzinfo=datetime.UTC), "off"),
    ],
)
def test_timestamp_attribute_is_compared_in_seconds(
    typed_stub: pb_grpc.EvaluationServiceStub, when: datetime.datetime, expected: str
) -> None:
    value = pb.AttributeValue()
    value.timestamp_value.FromDatetime(when)
    request = pb.GetTreatmentRequest(key="k", flag="date", attributes={"signup": value})
    assert typed_stub.GetTreatment(request, timeout=TIMEOUT).evaluation.treatment == expected


def invalid(call: grpc.UnaryUnaryMultiCallable, request: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return str(info.value.details())


def test_malformed_requests_are_invalid_argument(stub: pb_grpc.EvaluationServiceStub) -> None:
    assert invalid(stub.GetTreatment, pb.GetTreatmentRequest(flag="f")) == "key: must not be empty"
    assert invalid(stub.GetTreatment, pb.GetTreatmentRequest(key="k")) == "flag: must not be empty"
    assert "at most 250" in invalid(
        stub.GetTreatment, pb.GetTreatmentRequest(key="k" * 251, flag="f")
    )
    no_value = pb.GetTreatmentRequest(key="k", flag="f", attributes={"plan": pb.AttributeValue()})
    assert invalid(stub.GetTreatment, no_value) == "attributes['plan']: no value set"
    assert invalid(stub.GetTreatments, pb.GetTreatmentsRequest(key="k", flags=["a", ""])) == (
        "flags[1]: must not be empty"
    )
    batch = pb.EvaluateBatchRequest(
        items=[pb.BatchItem(key="k", flag="f"), pb.BatchItem(key="", flag="f")]
    )
    assert invalid(stub.EvaluateBatch, batch) == "items[1].key: must not be empty"
    batch = pb.EvaluateBatchRequest(
        items=[pb.BatchItem(key="k", flag="f", bucketing_key="b" * 251)]
    )
    assert invalid(stub.EvaluateBatch, batch) == (
        "items[0].bucketing_key: 251 characters, at most 250 allowed"
    )


def test_limits(stub: pb_grpc.EvaluationServiceStub) -> None:
    too_many = {f"a{i}": pb.AttributeValue(int_value=i) for i in range(257)}
    message = invalid(
        stub.GetTreatment, pb.GetTreatmentRequest(key="k", flag="f", attributes=too_many)
    )
    assert message == "attributes: 257 entries, at most 256 allowed"
    batch = pb.EvaluateBatchRequest(items=[pb.BatchItem(key="k", flag="f")] * 10_001)
    assert invalid(stub.EvaluateBatch, batch) == "items: 10001 given, at most 10000 allowed"
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTreatment(
            pb.GetTreatmentRequest(key="k", flag="f" * (5 * 1024 * 1024)), timeout=TIMEOUT
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_track(stub: pb_grpc.EvaluationServiceStub, demo_sidecar: RunningSidecar) -> None:
    def handed() -> int:  # validated, then refused: the demo sidecar has no collector
        return demo_sidecar.sidecar.metrics.merged().track.get("refused_no_collector", 0)

    before = handed()
    request = pb.TrackRequest(
        key="user-1",
        traffic_type="user",
        event_type="checkout.completed",
        value=42.0,
        properties={"plan": pb.AttributeValue(string_value="pro")},
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.Track(request, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no collector" in str(refused.value.details())
    assert handed() == before + 1
    bad = pb.TrackRequest(key="user-1", traffic_type="user", event_type="has space")
    assert "event_type: 'has space' must start" in invalid(stub.Track, bad)
    listed = pb.TrackRequest(
        key="u",
        traffic_type="user",
        event_type="e",
        properties={"l": pb.AttributeValue(string_list_value=pb.StringList(values=["x"]))},
    )
    assert (
        invalid(stub.Track, listed) == "properties['l']: lists are not allowed in event properties"
    )
    assert (
        invalid(stub.Track, pb.TrackRequest(key="u", event_type="e"))
        == "traffic_type: must not be empty"
    )
    assert handed() == before + 1
