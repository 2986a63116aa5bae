"""flagd dialect: evaluation cost in process, and OFREP against the gRPC lane.

    python -m benchmarks.flagd_bench

1. **In process**: microseconds per evaluation of the flagd testbed's flags (a static flag, a
   targeting rule through `$ref`, `fractional`), Fader's compiled rules (fractional v2 and v3)
   against `openfeature-flagd-core` 2.0.0's Python evaluator, which interprets the JsonLogic on
   every call (fractional v3), in the same run. Both return the typed value: Fader's time
   includes reading the variant's value.
2. **Over the network**: a sidecar in a child process serving the same flags; single-flag
   requests per second and server CPU per request for OFREP (`POST
   /ofrep/v1/evaluate/flags/{key}`, HTTP/1.1 keep-alive) against flagd's gRPC lane
   (`flagd.evaluation.v2.Service/ResolveString`), same flag, same context, 8 in flight.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from fader.pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as v2_grpc
from fader.snapshot.loader import build_snapshot
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from benchmarks.processes import closed_loop, cpu_seconds, stop
from tests.integration.harness import free_port, serve_env
from tests.vectors import flagd_vector

REPO = Path(__file__).resolve().parent.parent
CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("static", "boolean-flag", {}),
    ("targeting ($ref)", "some-email-targeted-flag", {"email": "ballmer@macrosoft.com"}),
    ("fractional", "fractional-flag", {"user": {"name": "jack"}}),
)
IN_FLIGHT = 8
WARMUP, WINDOW = 1.0, 5.0


def testkit(generation: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(flagd_vector("evaluator/flags/testkit-flags.json").read_text())
    doc["fractional"] = generation
    return doc


def per_call(call: Callable[[], Any], loops: int) -> float:
    """Best of five rounds, microseconds per call."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e6


def fader_call(snap: Any, flag: str, context: dict[str, Any]) -> Callable[[], Any]:
    """Fader's evaluation and the typed value of the variant it chose."""
    evaluate, values = snap.evaluate, snap.flags[flag].values
    return lambda: values[evaluate("user-1", flag, None, context).treatment]


def reference_call(core: FlagdCore, flag: str, context: dict[str, Any]) -> Callable[[], Any]:
    """openfeature-flagd-core's typed resolve of the same flag and context."""
    ctx = EvaluationContext("user-1", context)
    if flag == "boolean-flag":
        return lambda: core.resolve_boolean_value(flag, False, ctx).value
    return lambda: core.resolve_string_value(flag, "x", ctx).value


def in_process() -> list[tuple[str, float, float, float]]:
    snaps = {g: build_snapshot(testkit(g)) for g in ("v2", "v3")}
    core = FlagdCore()
    core.set_flags(json.dumps(testkit("v3")))
    rows = []
    for name, flag, context in CASES:
        v2_call, v3_call = (fader_call(snaps[g], flag, context) for g in ("v2", "v3"))
        reference = reference_call(core, flag, context)
        assert reference() == v3_call()
        rows.append(
            (name, per_call(v2_call, 50_000), per_call(v3_call, 50_000), per_call(reference, 2_000))
        )
    return rows


class Sidecar:
    """`fader serve` on the testbed's flags, with OFREP and gRPC on free loopback ports."""

    def __init__(self, workdir: Path) -> None:
        path = workdir / "flags.json"
        path.write_text(json.dumps(testkit("v2")))
        self.grpc_port, self.ofrep_port = free_port(), free_port()
        args = [
            "serve",
            "--snapshot",
            str(path),
            "--grpc-listen",
            f"127.0.0.1:{self.grpc_port}",
            "--ofrep-listen",
            f"127.0.0.1:{self.ofrep_port}",
            "--mgmt-listen",
            "off",
            "--sync-listen",
            "off",
            "--log-level",
            "warning",
        ]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", *args], cwd=REPO, env=serve_env(), text=True
        )
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


OFREP_BODY = json.dumps({"context": {"targetingKey": "user-1", "user": {"name": "jack"}}}).encode()


async def ofrep_rate(sidecar: Sidecar) -> tuple[float, float]:
    """Requests/s and server CPU µs per request, OFREP single flag, keep-alive connections."""
    request = (
        b"POST /ofrep/v1/evaluate/flags/fractional-flag HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(OFREP_BODY)).encode()
        + b"\r\n\r\n"
        + OFREP_BODY
    )
    connections = [
        await asyncio.open_connection("127.0.0.1", sidecar.ofrep_port) for _ in range(IN_FLIGHT)
    ]
    free = list(connections)

    async def call() -> None:
        reader, writer = free.pop()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        assert b'"hearts"' in body, body
        free.append((reader, writer))

    latencies, elapsed, cpu = await closed_loop(call, IN_FLIGHT, WARMUP, WINDOW, sidecar.cpu)
    for _, writer in connections:
        writer.close()
    return len(latencies) / elapsed, cpu / len(latencies) * 1e6


async def grpc_rate(sidecar: Sidecar) -> tuple[float, float]:
    """Requests/s and server CPU µs per request, flagd v2 ResolveString on one channel."""
    request = v2.ResolveStringRequest(flag_key="fractional-flag")
    request.context.update({"targetingKey": "user-1", "user": {"name": "jack"}})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = v2_grpc.ServiceStub(channel)

        async def call() -> None:
            response = await stub.ResolveString(request)
            assert response.value == "hearts"

        latencies, elapsed, cpu = await closed_loop(call, IN_FLIGHT, WARMUP, WINDOW, sidecar.cpu)
    return len(latencies) / elapsed, cpu / len(latencies) * 1e6


def network() -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="flagd-bench-") as tmp:
        sidecar = Sidecar(Path(tmp))
        try:
            return {
                "OFREP single flag": asyncio.run(ofrep_rate(sidecar)),
                "gRPC flagd.evaluation.v2 ResolveString": asyncio.run(grpc_rate(sidecar)),
            }
        finally:
            stop(sidecar.process)


def main() -> None:
    print("## In process: µs per evaluation (best of 5)")
    print("| flag | Fader, fractional v2 | Fader, fractional v3 | flagd-core 2.0.0 | ratio (v3) |")
    print("|---|---|---|---|---|")
    for name, fader_v2, fader_v3, reference in in_process():
        print(
            f"| {name} | {fader_v2:.2f} | {fader_v3:.2f} | {reference:.1f} | "
            f"{reference / fader_v3:.0f}x |"
        )
    print()
    print(f"## Over loopback: {IN_FLIGHT} in flight, {WINDOW:.0f} s window")
    print("| lane | requests/s | server CPU µs/request |")
    print("|---|---|---|")
    for lane, (rate, cpu) in network().items():
        print(f"| {lane} | {rate:,.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
