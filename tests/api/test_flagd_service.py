"""flagd.evaluation.v1/v2 over real gRPC (loopback TCP and a Unix socket) with raw stubs:
exact status codes, reasons, variants, metadata, v2's optional fields, Flagd-Selector,
ResolveAll and the EventStream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as v1
from fader.pb.flagd.evaluation.v1 import evaluation_pb2_grpc as v1_grpc
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot
from google.protobuf import json_format, struct_pb2

from sidecar.api import flagd_service
from sidecar.delivery.store import Store
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.integration.harness import (
    RunningSidecar,
    http_get,
    loopback_settings,
    running_sidecar,
    short_tmp,
)

TIMEOUT = 5.0
KEEP_ALIVE = 0.3
VERSIONS = {"v1": (v1, v1_grpc), "v2": (v2, v2_grpc)}


def flags_snapshot(version: int = 3, **banner: Any) -> Snapshot:
    pro = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]})
    return build_snapshot(
        snapshot_doc(
            flag(
                "banner",
                condition(partitions={"on": 100}),
                sets=["web"],
                configurations={"on": '{"color": "blue"}'},
                **banner,
            ),
            flag(
                "max-items",
                condition(pro, partitions={"25": 100}, label="pro plan"),
                condition(partitions={"10": 100}, label="default rule"),
                defaultTreatment="10",
            ),
            flag("ratio", condition(partitions={"half": 100}), configurations={"half": "0.25"}),
            flag("kill", killed=True, sets=["web"], configurations={"off": '{"a": 1}'}),
            flag("broken", configurations={"on": "{oops"}),
            flag("theme", condition(partitions={"dark": 100})),
            version=version,
        )
    )


@pytest.fixture(autouse=True, scope="module")
def short_keep_alive() -> Iterator[None]:
    """Sidecars started by this module send keep_alive every 0.3 s instead of 20 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flagd_service, "KEEP_ALIVE_SECONDS", KEEP_ALIVE)
        yield


@pytest.fixture(scope="module")
def sidecar(short_keep_alive: None) -> Iterator[RunningSidecar]:
    with (
        short_tmp() as tmp,
        running_sidecar(loopback_settings(uds=tmp / "f.sock"), flags_snapshot()) as running,
    ):
        yield running


@pytest.fixture(params=["tcp", "uds"])
def channel(request: pytest.FixtureRequest, sidecar: RunningSidecar) -> Iterator[grpc.Channel]:
    target = sidecar.tcp_target if request.param == "tcp" else sidecar.uds_target
    with grpc.insecure_channel(target) as channel:
        yield channel


@pytest.fixture(params=["v1", "v2"])
def api(request: pytest.FixtureRequest, channel: grpc.Channel) -> tuple[ModuleType, Any]:
    pb, pb_grpc = VERSIONS[request.param]
    return pb, pb_grpc.ServiceStub(channel)


def context(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def resolve(api: tuple[ModuleType, Any], kind: str, flag_key: str, **ctx: Any) -> Any:
    pb, stub = api
    request = getattr(pb, f"Resolve{kind}Request")(flag_key=flag_key, context=context(**ctx))
    return getattr(stub, f"Resolve{kind}")(request, timeout=TIMEOUT)


def error_of(api: tuple[ModuleType, Any], kind: str, flag_key: str, **ctx: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        resolve(api, kind, flag_key, **ctx)
    return info.value


def test_every_type_with_reason_variant_and_metadata(api: tuple[ModuleType, Any]) -> None:
    banner = resolve(api, "Boolean", "banner", targetingKey="u1")
    assert (banner.value, banner.reason, banner.variant) == (True, "STATIC", "on")
    assert json_format.MessageToDict(banner.metadata) == {"label": "rule", "version": 3.0}
    assert resolve(api, "String", "banner", targetingKey="u1").value == "on"
    obj = resolve(api, "Object", "banner", targetingKey="u1")
    assert (json_format.MessageToDict(obj.value), obj.variant) == ({"color": "blue"}, "on")

    pro = resolve(api, "Int", "max-items", targetingKey="u1", plan="pro")
    assert (pro.value, pro.reason, pro.variant) == (25, "TARGETING_MATCH", "25")
    assert json_format.MessageToDict(pro.metadata)["label"] == "pro plan"
    other = resolve(api, "Int", "max-items", targetingKey="u1", plan="free")
    assert (other.value, other.reason, other.variant) == (10, "DEFAULT", "10")
    assert resolve(api, "Float", "max-items", targetingKey="u1", plan="pro").value == 25.0
    ratio = resolve(api, "Float", "ratio", targetingKey="u1")
    assert (ratio.value, ratio.variant) == (0.25, "half")


def test_errors_are_flagds_status_codes(api: tuple[ModuleType, Any]) -> None:
    missing = error_of(api, "String", "no-such-flag", targetingKey="u1")
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "FLAG_NOT_FOUND" in missing.details()
    mismatch = error_of(api, "Boolean", "theme", targetingKey="u1")
    assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "TYPE_MISMATCH" in mismatch.details()
    assert error_of(api, "Int", "theme", targetingKey="u1").code() == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_of(api, "Object", "broken", targetingKey="u1").code() == grpc.StatusCode.DATA_LOSS


def test_malformed_requests_are_invalid_argument(api: tuple[ModuleType, Any]) -> None:
    no_key = error_of(api, "String", "banner")
    assert no_key.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context.targetingKey" in no_key.details()
    nested = error_of(api, "String", "banner", targetingKey="u", address={"city": "x"})
    assert nested.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context['address']" in nested.details()
    empty = error_of(api, "String", "", targetingKey="u")
    assert (empty.code(), empty.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "flag_key: must not be empty",
    )


def test_killed_flag_is_disabled_without_value_or_variant(channel: grpc.Channel) -> None:
    ctx = context(targetingKey="u1")
    new = v2_grpc.ServiceStub(channel).ResolveObject(
        v2.ResolveObjectRequest(flag_key="kill", context=ctx), timeout=TIMEOUT
    )
    assert new.reason == "DISABLED"
    assert not new.HasField("value") and not new.HasField("variant")
    assert json_format.MessageToDict(new.metadata) == {"label": "killed", "version": 3.0}
    old = v1_grpc.ServiceStub(channel).ResolveBoolean(
        v1.ResolveBooleanRequest(flag_key="kill", context=ctx), timeout=TIMEOUT
    )
    assert (old.reason, old.value, old.variant) == ("DISABLED", False, "")


def test_v2_sets_value_and_variant_on_answers(channel: grpc.Channel) -> None:
    answer = v2_grpc.ServiceStub(channel).ResolveString(
        v2.ResolveStringRequest(flag_key="banner", context=context(targetingKey="u")),
        timeout=TIMEOUT,
    )
    assert answer.HasField("value") and answer.HasField("variant")


def test_selector_limits_flags_to_a_flag_set(api: tuple[ModuleType, Any]) -> None:
    pb, stub = api
    ctx = context(targetingKey="u1")
    for header in ("flagSetId=web", "web"):
        metadata = (("flagd-selector", header),)
        answer = stub.ResolveString(
            pb.ResolveStringRequest(flag_key="banner", context=ctx),
            metadata=metadata,
            timeout=TIMEOUT,
        )
        assert answer.value == "on"
        with pytest.raises(grpc.RpcError) as info:
            stub.ResolveString(
                pb.ResolveStringRequest(flag_key="theme", context=ctx),
                metadata=metadata,
                timeout=TIMEOUT,
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveString(
            pb.ResolveStringRequest(flag_key="banner", context=ctx),
            metadata=(("flagd-selector", "source=flags.json"),),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_resolve_all_answers_every_flag_as_its_treatment(channel: grpc.Channel) -> None:
    stub = v1_grpc.ServiceStub(channel)
    request = v1.ResolveAllRequest(context=context(targetingKey="u1", plan="pro"))
    answer = stub.ResolveAll(request, timeout=TIMEOUT)
    flags = {name: json_format.MessageToDict(entry) for name, entry in answer.flags.items()}
    assert set(flags) == {"banner", "max-items", "ratio", "kill", "broken", "theme"}
    assert flags["max-items"] == {
        "reason": "TARGETING_MATCH",
        "variant": "25",
        "stringValue": "25",
        "metadata": {"label": "pro plan", "version": 3.0},
    }
    assert flags["kill"] == {"reason": "DISABLED", "metadata": {"label": "killed", "version": 3.0}}
    assert json_format.MessageToDict(answer.metadata) == {"version": 3.0}
    web = stub.ResolveAll(request, metadata=(("flagd-selector", "flagSetId=web"),), timeout=TIMEOUT)
    assert set(web.flags) == {"banner", "kill"}


def test_v2_has_no_resolve_all(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/flagd.evaluation.v2.Service/ResolveAll")
    with pytest.raises(grpc.RpcError) as info:
        call(b"", timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_flagd_calls_are_counted(sidecar: RunningSidecar, channel: grpc.Channel) -> None:
    stub = v2_grpc.ServiceStub(channel)
    stub.ResolveString(
        v2.ResolveStringRequest(flag_key="theme", context=context(targetingKey="u")),
        timeout=TIMEOUT,
    )
    _, text = http_get(sidecar.mgmt_url + "/metrics")
    assert 'fader_evaluations_total{flag="theme",treatment="dark"}' in text
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="ResolveString",'
        'grpc_service="flagd.evaluation.v2.Service",grpc_type="unary"}'
    ) in text


def events(stream: Iterator[Any], count: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (event.type, json_format.MessageToDict(event.data))
        for _, event in zip(range(count), stream, strict=False)
    ]


def next_change(stream: Iterator[Any]) -> dict[str, Any]:
    """The next configuration_change, skipping keep-alives."""
    for event in stream:
        if event.type != "keep_alive":
            assert event.type == "configuration_change"
            return dict(json_format.MessageToDict(event.data))
    raise AssertionError("the event stream ended")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_event_stream_ready_keep_alive_and_changes(version: str) -> None:
    pb, pb_grpc = VERSIONS[version]
    with (
        running_sidecar(loopback_settings(), flags_snapshot(version=1)) as running,
        grpc.insecure_channel(running.tcp_target) as channel,
    ):
        stub = pb_grpc.ServiceStub(channel)
        stream = stub.EventStream(pb.EventStreamRequest(), timeout=TIMEOUT)
        web = stub.EventStream(
            pb.EventStreamRequest(), metadata=(("flagd-selector", "web"),), timeout=TIMEOUT
        )
        assert events(stream, 2) == [("provider_ready", {}), ("keep_alive", {})]
        assert events(web, 1) == [("provider_ready", {})]

        running.store.swap(flags_snapshot(version=2, defaultTreatment="on"))
        assert next_change(stream) == {"flags": {"banner": {"type": "update"}}}
        assert next_change(web) == {"flags": {"banner": {"type": "update"}}}

        shrunk = build_snapshot(snapshot_doc(flag("theme"), flag("fresh"), version=3))
        running.store.swap(shrunk)
        assert next_change(stream) == {
            "flags": {
                name: {"type": kind}
                for name, kind in [
                    ("banner", "delete"),
                    ("broken", "delete"),
                    ("fresh", "write"),
                    ("kill", "delete"),
                    ("max-items", "delete"),
                    ("ratio", "delete"),
                    ("theme", "update"),
                ]
            }
        }
        assert next_change(web) == {
            "flags": {"banner": {"type": "delete"}, "kill": {"type": "delete"}}
        }
        stream.cancel()
        web.cancel()


def test_not_ready_is_unavailable_and_ready_comes_with_the_first_snapshot() -> None:
    with (
        running_sidecar(loopback_settings()) as running,
        grpc.insecure_channel(running.tcp_target) as channel,
    ):
        stub = v2_grpc.ServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ResolveBoolean(
                v2.ResolveBooleanRequest(flag_key="banner", context=context(targetingKey="u")),
                timeout=TIMEOUT,
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        stream = stub.EventStream(v2.EventStreamRequest(), timeout=TIMEOUT)
        assert events(stream, 1) == [("keep_alive", {})]
        running.store.swap(flags_snapshot())
        assert events(stream, 1) == [("provider_ready", {})]
        stream.cancel()


def test_stop_ends_event_streams() -> None:
    """Without this the drain would wait its whole grace period for the streams to end."""
    store = Store()
    store.swap(flags_snapshot())
    running = RunningSidecar(loopback_settings(), store)
    with grpc.insecure_channel(running.tcp_target) as channel:
        stream = v2_grpc.ServiceStub(channel).EventStream(v2.EventStreamRequest(), timeout=TIMEOUT)
        assert events(stream, 1) == [("provider_ready", {})]
        started = time.monotonic()
        running.stop(grace=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2
        assert list(stream) == []
        assert stream.code() == grpc.StatusCode.OK
