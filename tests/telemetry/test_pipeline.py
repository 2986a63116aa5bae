"""The telemetry pipeline against a real gRPC collector in the same process, whose answers
the tests script: delivery, transient failures, permanent refusals, the spool and its limit,
and shutdown with the collector down followed by a replay. The collector stores a batch id
once, like the reference one, but counts every arrival, so a batch sent twice shows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from fader.pb.fader.v1 import telemetry_pb2 as pb
from fader.pb.fader.v1 import telemetry_pb2_grpc
from fader.rules.result import Decision
from fader.snapshot.loader import build_snapshot

from sidecar.plumbing.backoff import Backoff
from sidecar.telemetry import pipeline as pipeline_module
from sidecar.telemetry.events import Event
from sidecar.telemetry.impressions import Mode, now_ms
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import Answer, Uploader
from tests.fader.rules.builders import flag, snapshot_doc
from tests.integration.harness import free_port
from tests.telemetry.arrivals import Arrivals

SNAP = build_snapshot(snapshot_doc(flag("f"), version=5))
ON = Decision("on", "rule", None, 7)
FAST = Backoff(initial=0.01, maximum=0.05)


class ScriptedCollector(telemetry_pb2_grpc.TelemetryServiceServicer):
    """Answers each upload with the next scripted code (OK once the script is used up) and
    keeps what it stored, deduplicating by batch id like the reference collector; every
    arrival is also counted (tests/telemetry/arrivals.py), so a resend cannot hide."""

    def __init__(self, script: list[grpc.StatusCode] | None = None) -> None:
        self.script = list(script or [])
        self.arrivals = Arrivals()
        self.impressions: list[str] = []
        self.events: list[str] = []
        self.counts: list[tuple[str, int]] = []

    @property
    def calls(self) -> int:
        return len(self.arrivals.ids)

    async def Upload(
        self, request: pb.UploadRequest, context: grpc.aio.ServicerContext
    ) -> pb.UploadResponse:
        self.arrivals.arrive(request.batch_id)
        if self.script:
            code = self.script.pop(0)
            if code is not grpc.StatusCode.OK:
                self.arrivals.fail()
                await context.abort(code, f"scripted {code.name}")
        if not self.arrivals.store(request.batch_id):
            return pb.UploadResponse(duplicate=True)
        self.impressions += [i.key for i in request.impressions]
        self.events += [e.key for e in request.events]
        self.counts += [(c.flag, c.count) for c in request.counts]
        return pb.UploadResponse()


class SendsTwice(Uploader):
    """The planted bug: every batch is uploaded twice (the second answer is the one used)."""

    async def send(self, request: bytes) -> Answer:
        await super().send(request)
        return await super().send(request)


# Servers and pipelines a scenario started, stopped by `run` even when the scenario fails: a
# grpc.aio server left running when its loop closes can hang the interpreter's exit.
_started: list[grpc.aio.Server | Pipeline] = []


async def serve(collector: ScriptedCollector, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    _started.append(server)
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(collector, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def pipeline(port: int, uploader: type[Uploader] = Uploader, **settings: object) -> Pipeline:
    base: dict[str, object] = {
        "mode": Mode.DEBUG,
        "flush_interval": 0.05,
        "batch_records": 10,
        "backoff": FAST,
        "sidecar_id": "test",
    }
    pipe = Pipeline(
        PipelineSettings(**(base | settings)),  # type: ignore[arg-type]
        uploader(f"127.0.0.1:{port}", timeout=10.0),
    )
    _started.append(pipe)
    return pipe


def record(pipe: Pipeline, keys: list[str]) -> None:
    pipe.recorder.record(SNAP, now_ms(), [(key, None, "f", ON) for key in keys])


async def until(
    condition: Callable[[], bool], timeout: float = 30.0, pipe: Pipeline | None = None
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        state = (pipe.stats.__dict__, pipe.gauges()) if pipe is not None else ""
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting {state}"
        await asyncio.sleep(0.01)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def guarded() -> None:
        try:
            await test()
        finally:
            for thing in reversed(_started):
                await (thing.stop(0) if isinstance(thing, grpc.aio.Server) else thing.close(0))
            _started.clear()

    asyncio.run(guarded())


def test_impressions_and_events_are_delivered_in_order() -> None:
    async def scenario() -> None:
        collector = ScriptedCollector()
        server, port = await serve(collector)
        pipe = pipeline(port)
        await pipe.start()
        keys = [f"u{i}" for i in range(35)]
        record(pipe, keys)
        assert pipe.add_event(Event("u1", "user", "buy", 2.0, {"sku": "a"}, 1))
        await until(lambda: len(collector.impressions) == 35 and collector.events == ["u1"])
        assert collector.impressions == keys
        await pipe.close(1.0)
        await server.stop(0)
        assert pipe.stats.sent == {"impressions": 35, "events": 1}
        assert pipe.stats.dropped == {}
        collector.arrivals.assert_each_batch_once()
        assert collector.arrivals.failed == 0

    run(scenario)


def test_a_batch_sent_twice_is_caught() -> None:
    """The planted bug: an uploader that sends every batch twice. The collector stores each
    id once, so the impressions still arrive exactly once and in order; only the arrival
    counts show the resend, and assert_each_batch_once must fail on them."""

    async def scenario() -> None:
        collector = ScriptedCollector()
        server, port = await serve(collector)
        pipe = pipeline(port, SendsTwice)
        await pipe.start()
        keys = [f"u{i}" for i in range(20)]
        record(pipe, keys)
        await until(lambda: pipe.stats.sent.get("impressions") == 20, pipe=pipe)
        assert collector.impressions == keys
        assert collector.arrivals.duplicates == len(collector.arrivals.stored) > 0
        with pytest.raises(AssertionError, match="sent again after it was stored"):
            collector.arrivals.assert_each_batch_once()
        await pipe.close(1.0)
        await server.stop(0)

    run(scenario)


def test_transient_errors_are_retried_through_the_spool_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        down = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        collector = ScriptedCollector(down)
        server, port = await serve(collector)
        pipe = pipeline(port, spool_dir=tmp_path)
        await pipe.start()
        keys = [f"u{i}" for i in range(50)]
        record(pipe, keys)
        # the pipeline counts a batch once the collector's answer is back
        await until(lambda: pipe.stats.sent.get("impressions") == 50, pipe=pipe)
        assert collector.impressions == keys  # order kept, none twice
        stats = pipe.stats
        assert stats.sent == {"impressions": 50}, stats.__dict__
        assert stats.spooled.get("impressions", 0) > 0, stats.__dict__
        assert stats.replayed == stats.spooled, stats.__dict__
        assert pipe.gauges()["upstream_up"] == 1
        await pipe.close(1.0)
        await server.stop(0)
        assert list(tmp_path.glob("*.batch")) == []
        collector.arrivals.assert_each_batch_once()  # four scripted failures, each retried once
        assert collector.arrivals.failed == 4

    run(scenario)


def test_permanent_refusal_drops_that_batch_only_and_counts_it() -> None:
    async def scenario() -> None:
        collector = ScriptedCollector([grpc.StatusCode.INVALID_ARGUMENT])
        server, port = await serve(collector)
        pipe = pipeline(port)
        await pipe.start()
        record(pipe, [f"a{i}" for i in range(10)])  # one full batch: refused
        await until(lambda: collector.calls == 1)
        record(pipe, [f"b{i}" for i in range(10)])
        await until(lambda: len(collector.impressions) == 10)
        assert collector.impressions == [f"b{i}" for i in range(10)]
        assert pipe.stats.dropped == {("impressions", "refused_invalid_argument"): 10}
        await pipe.close(1.0)
        await server.stop(0)
        # every impression counted once: the refused batch as dropped, never also as sent
        assert pipe.stats.sent == {"impressions": 10}
        collector.arrivals.assert_each_batch_once()  # the refused batch was not sent again
        assert len(set(collector.arrivals.ids)) == len(collector.arrivals.ids) == 2

    run(scenario)


def test_shutdown_with_the_collector_down_spools_and_the_next_run_replays(
    tmp_path: Path,
) -> None:
    port = free_port()

    async def first_run() -> None:
        pipe = pipeline(port, spool_dir=tmp_path)
        await pipe.start()
        record(pipe, [f"u{i}" for i in range(25)])
        assert pipe.add_event(Event("u1", "user", "buy", None, None, 1))
        await until(lambda: pipe.gauges()["upstream_up"] == 0)
        await pipe.close(0.5)
        assert pipe.stats.sent == {}
        assert pipe.stats.dropped == {}

    async def second_run() -> None:
        collector = ScriptedCollector()
        server, _ = await serve(collector, port)
        pipe = pipeline(port, spool_dir=tmp_path)
        await pipe.start()
        await until(lambda: pipe.stats.replayed == {"impressions": 25, "events": 1}, pipe=pipe)
        assert collector.impressions == [f"u{i}" for i in range(25)]
        await pipe.close(1.0)
        await server.stop(0)
        collector.arrivals.assert_each_batch_once()
        assert collector.arrivals.failed == 0

    run(first_run)
    assert len(list(tmp_path.glob("*.batch"))) >= 3
    run(second_run)
    assert list(tmp_path.glob("*.batch")) == []


def test_full_spool_drops_are_counted_and_events_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        pipe = pipeline(free_port(), spool_dir=tmp_path, spool_bytes=2_000, memory_bytes=1_000)
        await pipe.start()
        record(pipe, [f"user-{i:04d}" for i in range(300)])
        await until(lambda: ("impressions", "spool_full") in pipe.stats.dropped)
        await until(lambda: pipe.recorder.size == 0)
        assert pipe.saturated()
        assert not pipe.add_event(Event("u1", "user", "buy", None, None, 1))
        await pipe.close(0.1)
        spooled = pipe.stats.spooled["impressions"]
        dropped = pipe.stats.dropped[("impressions", "spool_full")]
        assert spooled > 0 and spooled + dropped == 300
        assert sum(f.stat().st_size for f in tmp_path.glob("*.batch")) <= 2_000

    run(scenario)


def test_without_a_spool_a_full_memory_drops_and_counts() -> None:
    async def scenario() -> None:
        pipe = pipeline(free_port(), memory_bytes=600)
        await pipe.start()
        record(pipe, [f"user-{i:04d}" for i in range(100)])
        await until(lambda: pipe.recorder.size == 0)
        await until(lambda: ("impressions", "memory_full") in pipe.stats.dropped)
        await pipe.close(0.1)
        queued = pipe.stats.queued["impressions"]
        assert queued == 100
        assert sum(pipe.stats.dropped.values()) == 100  # nothing kept after shutdown

    run(scenario)


class SlowCollector(ScriptedCollector):
    """Holds each answer until `release` is set, to catch a batch in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.received = asyncio.Event()

    async def Upload(
        self, request: pb.UploadRequest, context: grpc.aio.ServicerContext
    ) -> pb.UploadResponse:
        self.received.set()
        await self.release.wait()
        return await super().Upload(request, context)


def test_a_batch_stored_while_it_was_spilled_is_not_sent_again(tmp_path: Path) -> None:
    """A batch in flight from memory is spilled to the spool (the collector looked down to
    another path); when its answer comes back stored, the spool's copy is skipped."""

    async def scenario() -> None:
        collector = SlowCollector()
        server, port = await serve(collector)
        pipe = pipeline(port, spool_dir=tmp_path)
        await pipe.start()
        record(pipe, [f"u{i}" for i in range(10)])  # one full batch, sent from memory
        await asyncio.wait_for(collector.received.wait(), 10)
        pipe._collector_down("UNAVAILABLE", "as if another upload had failed")
        await until(lambda: pipe.stats.spooled.get("impressions") == 10, pipe=pipe)
        collector.release.set()
        await until(lambda: pipe.gauges()["spool_batches"] == 0, pipe=pipe)
        assert collector.calls == 1
        assert collector.impressions == [f"u{i}" for i in range(10)]
        assert pipe.stats.sent == {"impressions": 10}
        assert list(tmp_path.glob("*.batch")) == []
        await pipe.close(1.0)
        await server.stop(0)
        collector.arrivals.assert_each_batch_once()

    run(scenario)


@pytest.mark.parametrize("spooled", [False, True], ids=["uploaded", "spooled first"])
def test_one_unencodable_record_is_set_aside_alone(tmp_path: Path, spooled: bool) -> None:
    """The net for what passes the doors: a recorded key protobuf cannot carry (a lone
    surrogate; the JSON lanes refuse one now) costs that record only, counted when its
    impression is made, whether the rest is uploaded at once or spooled first while the
    collector is down. Before the net, the whole batch around it was dropped as
    `unencodable` (or `spool_error`)."""

    async def scenario() -> None:
        collector = ScriptedCollector([grpc.StatusCode.UNAVAILABLE] * 3 if spooled else [])
        server, port = await serve(collector)
        pipe = pipeline(port, spool_dir=tmp_path)
        await pipe.start()
        keys = [f"u{i}" for i in range(25)]
        record(pipe, [*keys[:12], "\udc80", *keys[12:]])
        await until(lambda: pipe.stats.sent.get("impressions") == 25, pipe=pipe)
        assert sorted(collector.impressions) == sorted(keys)
        assert pipe.stats.dropped == {("impressions", "unencodable"): 1}
        assert pipe.stats.sent == {"impressions": 25}
        if spooled:
            assert pipe.stats.spooled.get("impressions", 0) > 0, pipe.stats.__dict__
        await pipe.close(1.0)
        await server.stop(0)
        collector.arrivals.assert_each_batch_once()

    run(scenario)


def test_the_process_task_wakes_often_only_under_load() -> None:
    """Recorded lookups are processed every BUSY_SECONDS while they arrive at BUSY_RATE a
    second or more (read back 50 ms later they were out of the CPU's caches, and cost a
    batched lookup more than at 5 ms); below that rate the next pause is IDLE_SECONDS, so
    an idle or lightly used sidecar wakes 20 times a second, not 200. The rate is judged
    over the pause just ended, so a load does not flip the cadence at every turn."""

    async def scenario() -> None:
        collector = ScriptedCollector()
        server, port = await serve(collector)
        pipe = pipeline(port, batch_records=100_000)
        pauses: list[float] = []
        turns = asyncio.Queue[None]()

        async def recorded_sleep(seconds: float) -> None:
            pauses.append(seconds)
            turns.put_nowait(None)
            await asyncio.sleep(0.001)

        pipe._sleep = recorded_sleep
        await pipe.start()
        fast, slow = pipeline_module.BUSY_SECONDS, pipeline_module.IDLE_SECONDS
        after_slow = round(pipeline_module.BUSY_RATE * slow)
        after_fast = round(pipeline_module.BUSY_RATE * fast)
        assert after_fast < after_slow
        # lookups recorded during each pause: none (twice), too few, enough, enough for a
        # short pause (twice), too few for a short pause, none
        for waiting in (
            0,
            0,
            after_slow - 1,
            after_slow,
            after_fast,
            after_fast,
            after_fast - 1,
            0,
        ):
            await turns.get()
            record(pipe, [f"u{n}" for n in range(waiting)])
        await turns.get()
        await pipe.close(1.0)
        await server.stop(0)
        # a pause is chosen as a turn begins: by what waited when the previous pause ended
        assert pauses[:9] == [slow] * 4 + [fast] * 3 + [slow] * 2, pauses
        assert pipe.recorder.size == 0

    run(scenario)
