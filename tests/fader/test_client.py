"""fader.Client and fader.aio.Client against a real sidecar, and against failing ones."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import threading
from collections.abc import Iterator

import fader.aio
import grpc
import pytest
from fader import Client, Result
from fader.pb.fader.v1 import evaluation_pb2 as pb

from tests.integration.harness import RunningSidecar

TIMEOUT = 5.0


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=TIMEOUT) as c:
        yield c


def test_design_examples(client: Client, demo_sidecar: RunningSidecar) -> None:
    snap = demo_sidecar.store.current
    assert snap is not None
    expected = snap.evaluate("user-1", "new-checkout")
    assert client.get_treatment("user-1", "new-checkout", {"plan": "pro"}) == expected.treatment
    assert client.get_treatment_with_config("user-1", "new-checkout") == (
        expected.treatment,
        expected.config,
    )
    assert client.get_treatments("alice", ["beta-banner", "kill-switch-demo"]) == {
        "beta-banner": "on",
        "kill-switch-demo": "safe",
    }
    via_account = snap.evaluate("user-1", "new-checkout", "acct-9")
    assert client.evaluate("user-1", "new-checkout", bucketing_key="acct-9") == Result(
        via_account.treatment, via_account.config, via_account.label, 1
    )
    # the demo sidecar has no collector: the event is refused, so track() must not say True
    assert client.fallback_count == 0
    assert not client.track("user-1", "user", "checkout.completed", value=42.0, properties={"n": 1})
    assert client.fallback_count == 1


def test_attribute_types_reach_the_engine(client: Client) -> None:
    assert client.get_treatment("u", "pricing-tier", {"plan": "pro", "age": 30}) == "premium"
    assert client.get_treatment("u", "pricing-tier", {"plan": "pro", "age": 30.0}) == "standard"
    assert client.get_treatment("u", "pricing-tier", {"plan": "pro", "age": True}) == "standard"
    mixed = {"tags": ["a", "b"], "when": datetime.datetime.now(datetime.UTC), "ok": False}
    assert client.get_treatment("u", "ui-theme", mixed) == client.get_treatment("u", "ui-theme")
    with pytest.raises(TypeError, match="attribute 'bad': dict is not supported"):
        client.get_treatment("u", "ui-theme", {"bad": {}})
    with pytest.raises(TypeError, match="list of flag names"):
        client.get_treatments("u", "ui-theme")


def test_unknown_flag_and_all_flags(client: Client) -> None:
    assert client.evaluate("u", "missing") == Result("control", None, "definition not found", 1)
    assert set(client.get_treatments("u", [])) == {
        "beta-banner",
        "kill-switch-demo",
        "new-checkout",
        "pricing-tier",
        "ui-theme",
    }


def test_invalid_track_returns_false(client: Client) -> None:
    assert client.track("u", "user", "not valid!") is False
    assert client.fallback_count == 1


def test_aio_client(target: str, demo_sidecar: RunningSidecar) -> None:
    snap = demo_sidecar.store.current
    assert snap is not None

    async def scenario() -> None:
        async with fader.aio.Client(target, timeout=TIMEOUT) as c:
            assert (
                await c.get_treatment("u", "pricing-tier", {"plan": "pro", "age": 30}) == "premium"
            )
            assert await c.get_treatment_with_config("anyone", "kill-switch-demo") == (
                "safe",
                '{"mode":"safe"}',
            )
            assert await c.get_treatments("alice", ["beta-banner"]) == {"beta-banner": "on"}
            assert (await c.evaluate("alice", "beta-banner")).label == "whitelisted"
            assert await c.track("u", "user", "clicked") is False  # no collector: refused
            results = await asyncio.gather(
                *(c.get_treatment(f"u{i}", "ui-theme") for i in range(50))
            )
            assert results == [snap.evaluate(f"u{i}", "ui-theme").treatment for i in range(50)]
            assert c.fallback_count == 1  # the refused track

    asyncio.run(scenario())


def dead_target() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_unreachable_sidecar_gives_control_counts_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fader")
    with Client(dead_target(), timeout=1.0) as c:
        assert c.get_treatment("u", "f") == "control"
        assert c.get_treatments("u", ["a", "b"]) == {"a": "control", "b": "control"}
        assert c.evaluate("u", "f") == Result("control", None, "sidecar unavailable", None)
        assert c.track("u", "user", "e") is False
        assert c.fallback_count == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "fader"]
    assert len(messages) == 1  # rate-limited: one line, not one per call
    assert "GetTreatment failed (UNAVAILABLE" in messages[0]


class SlowService:
    """A fader.v1 server that answers too late, and records which connection each call used."""

    def __init__(self) -> None:
        self.peers: list[str] = []

    async def GetTreatment(
        self, request: pb.GetTreatmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTreatmentResponse:
        self.peers.append(context.peer())
        if request.key == "slow":
            await asyncio.sleep(3.0)
        return pb.GetTreatmentResponse(
            evaluation=pb.Evaluation(flag=request.flag, treatment="on"), version=9
        )


@pytest.fixture
def slow_server() -> Iterator[tuple[str, SlowService]]:
    service = SlowService()
    loop = asyncio.new_event_loop()
    servers: list[grpc.aio.Server] = []

    async def start() -> int:
        server = grpc.aio.server()
        servers.append(server)
        handlers = {
            "GetTreatment": grpc.unary_unary_rpc_method_handler(
                service.GetTreatment,
                request_deserializer=pb.GetTreatmentRequest.FromString,
                response_serializer=pb.GetTreatmentResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fader.v1.EvaluationService", handlers),)
        )
        port: int = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return port

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    yield f"127.0.0.1:{port}", service
    asyncio.run_coroutine_threadsafe(servers[0].stop(0), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_slow_sidecar_gives_control_within_the_deadline(
    slow_server: tuple[str, SlowService],
) -> None:
    target, _ = slow_server
    with Client(target, timeout=0.5) as c:
        assert c.get_treatment("fast", "f") == "on"
        assert c.evaluate("slow", "f") == Result("control", None, "sidecar timeout", None)
        assert c.fallback_count == 1


def test_one_connection_is_reused(slow_server: tuple[str, SlowService]) -> None:
    target, service = slow_server
    with Client(target, timeout=2.0) as c:
        for i in range(20):
            assert c.get_treatment(f"k{i}", "f") == "on"
    assert len(service.peers) == 20 and len(set(service.peers)) == 1


def test_aio_client_falls_back_too() -> None:
    async def scenario() -> None:
        async with fader.aio.Client(dead_target(), timeout=1.0) as c:
            assert await c.get_treatment("u", "f") == "control"
            assert await c.get_treatments("u", ["a"]) == {"a": "control"}
            assert await c.track("u", "user", "e") is False
            assert c.fallback_count == 3

    asyncio.run(scenario())
