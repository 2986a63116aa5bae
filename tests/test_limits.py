"""Limits: each refusal is a clear error and a counter, and loses nothing already served."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import grpc
import pytest
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as flagd
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as flagd_grpc
from fader.snapshot.limits import SnapshotLimits
from google.protobuf import struct_pb2

from sidecar import limits
from sidecar.config import ConfigError, load_settings
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    http_get,
    loopback_settings,
    running_sidecar,
    serve_process,
    short_tmp,
)


def _bytes(version: int, flags: int = 1, segment_keys: int = 0) -> bytes:
    doc = snapshot_doc(*(flag(f"f{i}") for i in range(flags)), version=version)
    doc["segments"] = {"s": [f"k{i}" for i in range(segment_keys)]}
    return json.dumps(doc).encode()


def test_snapshot_limits_refuse_with_reason_and_count() -> None:
    applier = Applier(Store(), limits=SnapshotLimits(4000, 3, 5))
    assert applier.apply_bytes(_bytes(1), "json", "t").applied
    cases = {
        "too_large": _bytes(2, segment_keys=600),
        "too_many_flags": _bytes(2, flags=4),
        "too_many_segment_keys": _bytes(2, segment_keys=6),
    }
    messages = {
        "too_large": "more than --max-snapshot-bytes 4000",
        "too_many_flags": "4 flags, more than --max-flags 3",
        "too_many_segment_keys": "6 segment keys, more than --max-segment-keys 5",
    }
    for reason, data in cases.items():
        before = limits.REFUSALS.get(reason)
        outcome = applier.apply_bytes(data, "json", "t")
        assert (outcome.applied, outcome.reason) == (False, reason)
        assert messages[reason] in str(outcome.errors[0])
        assert limits.REFUSALS.get(reason) == before + 1
    assert applier.store.current is not None and applier.store.current.version == 1
    assert applier.apply_bytes(_bytes(2, flags=3, segment_keys=5), "json", "t").applied


def test_startup_with_an_oversized_snapshot_file_fails_clearly() -> None:
    with short_tmp() as tmp:
        snapshot = tmp / "snap.json"
        snapshot.write_bytes(_bytes(1, flags=3))
        args = ["--snapshot", str(snapshot), "--max-flags", "2", "--grpc-listen", "127.0.0.1:0"]
        with serve_process([*args, "--mgmt-listen", "off"], tmp) as sc:
            assert sc.wait(20) == 1
            assert "3 flags, more than --max-flags 2" in sc.log


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningSidecar]:
    settings = loopback_settings(max_attributes=2, max_attribute_size=10, max_watch_streams=2)
    with running_sidecar(settings, demo_snapshot()) as running:
        yield running


def _metric(running: RunningSidecar, limit: str) -> float:
    text = http_get(running.mgmt_url + "/metrics")[1]
    match = re.search(rf'fader_limit_refusals_total{{limit="{limit}"}} (\S+)', text)
    assert match, text
    return float(match.group(1))


def _attribute(text: str) -> pb.AttributeValue:
    return pb.AttributeValue(string_value=text)


def test_attribute_count_and_size(limited: RunningSidecar) -> None:
    with grpc.insecure_channel(limited.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        ok = {"a": _attribute("x" * 10), "b": pb.AttributeValue(int_value=1)}
        assert stub.GetTreatment(pb.GetTreatmentRequest(key="u", flag="f", attributes=ok))
        three = {name: _attribute("") for name in "abc"}
        cases = {
            "attributes": (three, "3 entries, at most 2"),
            "attribute_size": ({"a": _attribute("x" * 11)}, "['a']: 11 characters, at most 10"),
        }
        for limit, (attributes, message) in cases.items():
            before = _metric(limited, limit)
            request = pb.GetTreatmentRequest(key="u", flag="f", attributes=attributes)
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetTreatment(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in str(caught.value.details())
            assert _metric(limited, limit) == before + 1
        too_long_list = pb.AttributeValue()
        too_long_list.string_list_value.values.extend(["x" * 6, "y" * 6])
        with pytest.raises(grpc.RpcError) as caught:
            stub.EvaluateBatch(
                pb.EvaluateBatchRequest(
                    items=[pb.BatchItem(key="u", flag="f", attributes={"l": too_long_list})]
                )
            )
        assert "items[0].attributes['l']: 12 characters" in str(caught.value.details())


def test_watch_streams_are_bounded(limited: RunningSidecar) -> None:
    with grpc.insecure_channel(limited.tcp_target) as channel:
        stub = pb_grpc.EvaluationServiceStub(channel)
        open_streams = [stub.WatchChanges(pb.WatchChangesRequest()) for _ in range(2)]
        for stream in open_streams:
            assert next(stream).version == demo_snapshot().version
        before = _metric(limited, "watch_streams")
        refused = stub.WatchChanges(pb.WatchChangesRequest())
        with pytest.raises(grpc.RpcError) as caught:
            next(refused)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-watch-streams" in str(caught.value.details())
        assert _metric(limited, "watch_streams") == before + 1
        open_streams[0].cancel()
        # a slot frees up once a stream ends
        for _ in range(50):
            again = stub.WatchChanges(pb.WatchChangesRequest())
            try:
                next(again)
                again.cancel()
                break
            except grpc.RpcError:
                continue
        else:
            raise AssertionError("no stream admitted after one was cancelled")
        open_streams[1].cancel()


def test_flagd_shares_the_attribute_and_stream_limits(limited: RunningSidecar) -> None:
    with grpc.insecure_channel(limited.tcp_target) as channel:
        stub = flagd_grpc.ServiceStub(channel)
        context = struct_pb2.Struct()
        context.update({"targetingKey": "u", "a": "x" * 11})
        before = _metric(limited, "attribute_size")
        with pytest.raises(grpc.RpcError) as caught:
            stub.ResolveString(flagd.ResolveStringRequest(flag_key="f", context=context))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "context['a']: 11 characters, at most 10" in str(caught.value.details())
        assert _metric(limited, "attribute_size") == before + 1
        open_streams = [stub.EventStream(flagd.EventStreamRequest()) for _ in range(2)]
        for stream in open_streams:
            assert next(stream).type == "provider_ready"
        refused = stub.EventStream(flagd.EventStreamRequest())
        with pytest.raises(grpc.RpcError) as caught:
            next(refused)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in open_streams:
            stream.cancel()


def test_settings() -> None:
    settings = load_settings(["--max-flags", "7", "--max-attribute-size", "9"], environ={})
    assert (settings.max_flags, settings.max_attribute_size) == (7, 9)
    assert settings.max_snapshot_bytes == 256 * 1024 * 1024
    with pytest.raises(ConfigError):
        load_settings(["--max-segment-keys", "0"], environ={})
