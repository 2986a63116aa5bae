"""flagd.sync.v1.FlagSyncService over real gRPC: the whole configuration at once, again after
a swap that changes it (and not after one that does not), flag sets by the Flagd-Selector
header or the request field, FetchAllFlags, GetMetadata, on --sync-listen, the evaluation
port and the Unix socket."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fader.pb.flagd.sync.v1 import sync_pb2 as pb
from fader.pb.flagd.sync.v1 import sync_pb2_grpc as pb_grpc
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.integration.harness import (
    LOCAL_ANY_PORT,
    RunningSidecar,
    loopback_settings,
    running_sidecar,
    short_tmp,
)

TIMEOUT = 5.0


def snapshot(version: int, shop_default: str = "on", split_treatment: str = "on") -> Snapshot:
    doc = snapshot_doc(
        flag("split-only", condition(partitions={split_treatment: 100})), version=version
    )
    doc["flagd"] = {
        "flags": {
            "shop-flag": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": shop_default,
                "targeting": {"if": [{"$ref": "pro"}, "on"]},
                "metadata": {"flagSetId": "shop"},
            },
            "other-flag": {"state": "ENABLED", "variants": {"a": "a"}, "defaultVariant": "a"},
        },
        "$evaluators": {"pro": {"==": [{"var": "plan"}, "pro"]}},
    }
    return build_snapshot(doc)


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    with (
        short_tmp() as tmp,
        running_sidecar(
            loopback_settings(uds=tmp / "s.sock", sync_listen=LOCAL_ANY_PORT), snapshot(1)
        ) as running,
    ):
        yield running


def targets(sidecar: RunningSidecar) -> list[str]:
    return [str(sidecar.sidecar.sync_address), sidecar.tcp_target, sidecar.uds_target]


def stream(
    target: str, selector: str | None = None, header: str | None = None
) -> tuple[Any, queue.Queue[Any]]:
    """Opens SyncFlags; its messages arrive in the queue."""
    channel = grpc.insecure_channel(target)
    metadata = (("flagd-selector", header),) if header else None
    call = pb_grpc.FlagSyncServiceStub(channel).SyncFlags(
        pb.SyncFlagsRequest(provider_id="test", selector=selector or ""), metadata=metadata
    )
    messages: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            for message in call:
                messages.put(json.loads(message.flag_configuration))
        except grpc.RpcError as err:
            messages.put(err)

    threading.Thread(target=read, daemon=True).start()
    return (call, channel), messages


def test_every_listener_serves_the_whole_configuration(sidecar: RunningSidecar) -> None:
    for target in targets(sidecar):
        (call, channel), messages = stream(target)
        first = messages.get(timeout=TIMEOUT)
        assert sorted(first["flags"]) == ["other-flag", "shop-flag"]
        # $ref substituted: a provider needs no $evaluators
        assert first["flags"]["shop-flag"]["targeting"] == {
            "if": [{"==": [{"var": "plan"}, "pro"]}, "on"]
        }
        call.cancel()
        channel.close()


def test_a_swap_sends_the_new_configuration_and_a_split_only_swap_sends_nothing(
    sidecar: RunningSidecar,
) -> None:
    (call, channel), messages = stream(str(sidecar.sidecar.sync_address), header="flagSetId=shop")
    first = messages.get(timeout=TIMEOUT)
    assert list(first["flags"]) == ["shop-flag"]
    version = sidecar.store.current.version  # type: ignore[union-attr]
    sidecar.store.swap(snapshot(version + 1, split_treatment="off"))
    sidecar.store.swap(snapshot(version + 2, shop_default="off", split_treatment="off"))
    second = messages.get(timeout=TIMEOUT)
    assert second["flags"]["shop-flag"]["defaultVariant"] == "off"
    assert messages.empty()
    call.cancel()
    channel.close()


def test_fetch_all_and_metadata(sidecar: RunningSidecar) -> None:
    with grpc.insecure_channel(str(sidecar.sidecar.sync_address)) as channel:
        stub = pb_grpc.FlagSyncServiceStub(channel)
        answer = stub.FetchAllFlags(pb.FetchAllFlagsRequest(selector="shop"), timeout=TIMEOUT)
        assert list(json.loads(answer.flag_configuration)["flags"]) == ["shop-flag"]
        metadata = stub.GetMetadata(pb.GetMetadataRequest(), timeout=TIMEOUT)
        assert metadata.HasField("metadata") and not metadata.metadata.fields
        with pytest.raises(grpc.RpcError) as refused:
            stub.FetchAllFlags(
                pb.FetchAllFlagsRequest(), metadata=(("flagd-selector", "source=flags.json"),)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_fetch_before_a_snapshot_is_unavailable() -> None:
    with (
        running_sidecar(loopback_settings(sync_listen=LOCAL_ANY_PORT)) as running,
        grpc.insecure_channel(str(running.sidecar.sync_address)) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        pb_grpc.FlagSyncServiceStub(channel).FetchAllFlags(
            pb.FetchAllFlagsRequest(), timeout=TIMEOUT
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
