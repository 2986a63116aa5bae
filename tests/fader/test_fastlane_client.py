"""fader.Client and fader.aio.Client on `fastlane://` targets: a real sidecar, a server that
never answers, one that answers in reverse order, and one that stops mid-load."""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import fader.aio
import pytest
from fader import Client, Result
from fader import fastlane as fl

from tests.integration.harness import (
    RunningSidecar,
    demo_snapshot,
    loopback_settings,
    running_sidecar,
    short_tmp,
)

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def lane() -> Iterator[RunningSidecar]:
    with (
        short_tmp() as tmp,
        running_sidecar(loopback_settings(fastlane_uds=tmp / "fl.sock"), demo_snapshot()) as r,
    ):
        yield r


@pytest.fixture
def target(lane: RunningSidecar) -> str:
    return f"fastlane://{lane.sidecar.fastlane_path}"


def test_sync_client(lane: RunningSidecar, target: str, caplog: pytest.LogCaptureFixture) -> None:
    snap = lane.store.current
    assert snap is not None
    with Client(target, timeout=TIMEOUT) as c:
        expected = snap.evaluate("user-1", "new-checkout", "acct-9")
        assert c.evaluate("user-1", "new-checkout", bucketing_key="acct-9") == Result(
            expected.treatment, expected.config, expected.label, 1
        )
        assert c.get_treatment("u", "pricing-tier", {"plan": "pro", "age": 30}) == "premium"
        assert c.get_treatment("u", "pricing-tier", {"plan": "pro", "age": 30.0}) == "standard"
        when = datetime.datetime.now(datetime.UTC)
        assert c.get_treatment("u", "ui-theme", {"t": when, "tags": ("a",)}) in ("classic", "dark")
        assert c.get_treatment_with_config("anyone", "kill-switch-demo") == (
            "safe",
            '{"mode":"safe"}',
        )
        assert c.get_treatments("alice", ["beta-banner", "kill-switch-demo"]) == {
            "beta-banner": "on",
            "kill-switch-demo": "safe",
        }
        assert len(c.get_treatments("alice", [])) == 5
        assert c.evaluate("u", "missing") == Result("control", None, "definition not found", 1)
        assert c.fallback_count == 0
        # the demo sidecar has no collector: the event is refused, so track() must not say True
        assert c.track("u", "user", "clicked", value=1, properties={"n": 2, "gone": None}) is False
        assert c.fallback_count == 1
        assert "track failed (FAILED_PRECONDITION: events are not kept" in caplog.text
        assert c.track("u", "user", "not valid!") is False
        assert c.fallback_count == 2
        with pytest.raises(TypeError, match="attribute 'bad': dict is not supported"):
            c.get_treatment("u", "ui-theme", {"bad": {}})


def test_aio_client_pipelines(lane: RunningSidecar, target: str) -> None:
    snap = lane.store.current
    assert snap is not None

    async def scenario() -> None:
        async with fader.aio.Client(target, timeout=TIMEOUT) as c:
            assert await c.get_treatment("u", "pricing-tier", {"plan": "pro", "age": 30}) == (
                "premium"
            )
            assert await c.get_treatments("alice", ["beta-banner"]) == {"beta-banner": "on"}
            assert (await c.evaluate("alice", "beta-banner")).label == "whitelisted"
            assert await c.get_treatment_with_config("x", "kill-switch-demo") == (
                "safe",
                '{"mode":"safe"}',
            )
            assert await c.track("u", "user", "clicked") is False  # no collector: refused
            results = await asyncio.gather(
                *(c.get_treatment(f"u{i}", "ui-theme") for i in range(300))
            )
            assert results == [snap.evaluate(f"u{i}", "ui-theme").treatment for i in range(300)]
            assert c.fallback_count == 1  # the refused track

    asyncio.run(scenario())


def test_relative_path_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        Client("fastlane://run/fader.sock")


def test_unreachable_socket_gives_control() -> None:
    with short_tmp() as tmp, Client(f"fastlane://{tmp}/none.sock", timeout=1.0) as c:
        assert c.evaluate("u", "f") == Result("control", None, "sidecar unavailable", None)
        assert c.get_treatments("u", ["a"]) == {"a": "control"}
        assert c.track("u", "user", "e") is False
        assert c.fallback_count == 3


def silent_server(path: Path) -> tuple[socket.socket, threading.Thread]:
    """Greets every client, then reads and never answers."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        held = []  # open, so that clients wait rather than see the connection end
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            conn.recv(len(fl.PREAMBLE))
            conn.sendall(fl.encode({"version": fl.VERSION}))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_timeouts_give_control_sync_and_aio() -> None:
    with short_tmp() as tmp:
        listener, thread = silent_server(tmp / "silent.sock")
        target = f"fastlane://{tmp}/silent.sock"
        with Client(target, timeout=0.1) as c:
            assert c.evaluate("u", "f") == Result("control", None, "sidecar timeout", None)
            assert c.get_treatment("u", "f") == "control"  # after a reconnect

        async def scenario() -> None:
            async with fader.aio.Client(target, timeout=0.1) as c:
                results = await asyncio.gather(*(c.evaluate("u", "f") for _ in range(10)))
                assert set(results) == {Result("control", None, "sidecar timeout", None)}
                assert c.fallback_count == 10

        asyncio.run(scenario())
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        listener.close()
        thread.join(5)


def test_answers_split_across_reads_reach_the_sync_client() -> None:
    """A server that sends the hello and every answer in two pieces, a pause between them:
    the sync client's first read of an answer holds part of a frame, which it must keep."""
    with short_tmp() as tmp:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp / "split.sock"))
        listener.listen()

        def send_in_two(conn: socket.socket, frame: bytes) -> None:
            conn.sendall(frame[:6])
            threading.Event().wait(0.05)
            conn.sendall(frame[6:])

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(len(fl.PREAMBLE))
                send_in_two(conn, fl.encode({"version": fl.VERSION}))
                for _ in range(3):
                    size = int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "big")
                    request = fl.decode(conn.recv(size, socket.MSG_WAITALL))
                    answer = {"treatment": request["key"], "label": "l", "config": None}
                    send_in_two(conn, fl.encode({"id": request["id"], "version": 3, **answer}))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with Client(f"fastlane://{tmp}/split.sock", timeout=TIMEOUT) as c:
            assert c.get_treatment("k1", "f") == "k1"
            assert c.evaluate("k2", "f") == Result("k2", None, "l", 3)
            assert c.get_treatment("k3", "f", {"plan": "pro"}) == "k3"
            assert c.fallback_count == 0
        thread.join(5)
        listener.close()


def test_answers_out_of_order_reach_their_callers() -> None:
    """A server that collects 50 requests and answers them last first."""

    async def scenario(path: Path) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(len(fl.PREAMBLE))
            writer.write(fl.encode({"version": fl.VERSION}))
            requests = []
            for _ in range(50):
                size = int.from_bytes(await reader.readexactly(4), "big")
                requests.append(fl.decode(await reader.readexactly(size)))
            for request in reversed(requests):
                answer = {"treatment": request["key"], "label": None, "config": None}
                writer.write(fl.encode({"id": request["id"], "version": 3, **answer}))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handle, str(path))
        async with server, fader.aio.Client(f"fastlane://{path}", timeout=TIMEOUT) as c:
            keys = [f"k{i}" for i in range(50)]
            assert await asyncio.gather(*(c.get_treatment(k, "f") for k in keys)) == keys

    with short_tmp() as tmp:
        asyncio.run(scenario(tmp / "rev.sock"))


def test_server_shutdown_under_load_gives_answers_or_control() -> None:
    with short_tmp() as tmp:
        path = tmp / "fl.sock"
        with running_sidecar(loopback_settings(fastlane_uds=path), demo_snapshot()) as running:

            async def scenario() -> list[str]:
                async with fader.aio.Client(f"fastlane://{path}", timeout=TIMEOUT) as c:
                    await c.get_treatment("warm", "ui-theme")
                    calls = [c.get_treatment(f"u{i}", "ui-theme") for i in range(3000)]
                    load = asyncio.gather(*calls)
                    await asyncio.sleep(0)
                    stop = asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(running.sidecar.stop(1.0), running.loop)
                    )
                    results, _ = await asyncio.gather(load, stop)
                    return list(results)

            snap = running.store.current
            assert snap is not None
            results = asyncio.run(scenario())
        for i, treatment in enumerate(results):
            assert treatment in (snap.evaluate(f"u{i}", "ui-theme").treatment, "control")
        assert not path.exists()
