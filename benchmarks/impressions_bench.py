"""What recording impressions costs: lookups per second with impressions off, optimized and
debug, measured in one run.

Run: ``python -m benchmarks.impressions_bench`` (about 2 minutes; ``--quick`` about 40 s).

Three child processes run the real sidecar (``Sidecar``: grpc.aio on uvloop, metrics on, demo
snapshot) with gRPC and the fast lane on Unix sockets: one without a telemetry pipeline
(``off``, the baseline), one in ``optimized`` mode and one in ``debug`` mode, both uploading
to a collector served by this process (a grpc.aio handler that keeps what it receives and
counts it between windows, so the collector's own cost is neither the sidecar's nor taken
from the calls). This process is the load generator, on
uvloop, closed loop: GetTreatment at 8 calls in flight, EvaluateBatch of 100 lookups at 8 in
flight, and the fast lane at 64 in flight. Every request uses a new key from a pool of 50,000
(so ``optimized`` sends each key's first impression and counts the rest, as in production
with returning users). Each round starts three fresh server processes and measures every
workload in ``--windows`` windows per mode (5 by default), the modes taking turns, so that a
drift in the machine's speed falls on the three alike; a cell sums its windows, and a line
per cell gives its median round. The summary gives two ratios per mode, each round's taken
against the `off` of the same round (measured in the same turns), then their median and
range over the rounds: lookups/s on ÷ off, and the server's CPU time per lookup (user +
system, from /proc) off ÷ on, the throughput ratio of a CPU-bound server, which the
machine's load moves much less.

``--upload-cost`` measures one upload alone: the CPU time the sidecar's Uploader spends
sending an UploadRequest of 1, 5,000 and 10,000 debug impressions (median of 40, 20 ms
apart), in a child process, to this process's collector; the 1-impression upload is the
baseline. It says whether an upload costs by its call or by its bytes, which decides how
large batches should be (``--telemetry-batch-records``).

``--instructions`` counts instead of timing (needs valgrind; about 2 minutes): each server
runs under callgrind with counting off, takes warm-up calls (every key of a pool of 1,000
seen once, so ``optimized`` then counts repeats as it does in steady state), is counted idle
for 5 s, then counts a fixed number of calls and the pipeline's work on them (the modes,
batching, the upload's encoding). Instructions per lookup on ÷ off is load-free; it leaves
out the kernel's share of a call (sockets, wake-ups). It is given twice: ``net`` takes off
what the server counted idle for as long as the calls took (work done by the clock, which
valgrind's slowdown charges ~50 times over to each lookup), ``raw`` does not.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import uvloop
from fader._lane import AsyncLane
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.pb.fader.v1 import telemetry_pb2

from benchmarks import processes
from benchmarks.grpc_bench import announce, demo_store
from sidecar.app.sidecar import Sidecar
from sidecar.config import Settings
from sidecar.telemetry.impressions import Mode
from sidecar.telemetry.pipeline import Pipeline, PipelineSettings
from sidecar.telemetry.uploader import Uploader, Verdict

REPO = Path(__file__).resolve().parent.parent
MODES = ("off", "optimized", "debug")
KEYS = 50_000
BATCH = 100
ATTRIBUTES = {"plan": "pro", "age": 30, "country": "fr"}


async def serve(mode: str, workdir: Path, collector: str) -> None:
    settings = Settings(
        grpc_listen=None,
        uds=workdir / f"{mode}.sock",
        fastlane_uds=workdir / f"{mode}.lane",
        mgmt_listen=None,
        sync_listen=None,
        ofrep_listen=None,
        demo=True,
    )
    telemetry = None
    if mode != "off":
        telemetry = Pipeline(
            PipelineSettings(mode=Mode(mode), sidecar_id=mode, spool_dir=workdir / mode),
            Uploader(collector, timeout=10.0),
        )
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    sidecar = Sidecar(settings, demo_store(settings), telemetry=telemetry)
    await sidecar.start()
    announce(0)
    await asyncio.to_thread(signal.sigwait, {signal.SIGTERM})
    await sidecar.stop(0)


class CountingCollector:
    """The collector: keeps each upload's bytes as they come and counts their impressions
    between windows (`settle`). Why not on arrival: this process is also the load generator,
    and parsing an upload costs ~130 ns an impression here, which in debug mode (one
    impression a lookup) took ~4 % of the generator's time per lookup away from the calls
    and lowered debug's lookups/s for a cost that is not the sidecar's (a real collector
    runs elsewhere). What the sidecar pays to send is unchanged."""

    def __init__(self) -> None:
        self.impressions: dict[str, int] = {}
        self._received: list[bytes] = []

    def add_to(self, server: grpc.aio.Server) -> None:
        """Serves Upload with no message decoding: the handler gets the request's bytes."""
        handler = grpc.unary_unary_rpc_method_handler(self._upload)
        service = telemetry_pb2.DESCRIPTOR.services_by_name["TelemetryService"].full_name
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Upload": handler}),)
        )

    async def _upload(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._received.append(request)
        return EMPTY_RESPONSE

    def settle(self) -> None:
        """Counts the impressions of every upload received since the last call."""
        for data in self._received:
            request = telemetry_pb2.UploadRequest.FromString(data)
            sidecar = request.sidecar_id
            self.impressions[sidecar] = self.impressions.get(sidecar, 0) + len(request.impressions)
        self._received.clear()


EMPTY_RESPONSE = telemetry_pb2.UploadResponse().SerializeToString()


async def start_collector() -> tuple[CountingCollector, grpc.aio.Server, str]:
    """A counting collector on a loopback port of its own, and its address."""
    collector = CountingCollector()
    server = grpc.aio.server()
    collector.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return collector, server, f"127.0.0.1:{port}"


@dataclass
class Cell:
    workload: str
    mode: str
    qps: float
    lookups_per_s: float
    server_cpu_us_per_lookup: float


class Server:
    def __init__(self, mode: str, workdir: Path, collector: str, callgrind: bool = False) -> None:
        env = processes.child_env()
        command = [
            sys.executable, "-m", "benchmarks.impressions_bench", "serve", mode, str(workdir),
            collector,
        ]  # fmt: skip
        if callgrind:
            out = f"--callgrind-out-file={workdir / f'{mode}.callgrind'}"
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", out, *command]
        self.mode = mode
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if callgrind else None,
            text=True,
            cwd=REPO,
            env=env,
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline().startswith("READY"):
            raise RuntimeError(f"the {mode} sidecar did not start")

    def cpu_seconds(self) -> float:
        return processes.cpu_seconds(self.process.pid)

    def stop(self) -> None:
        processes.stop(self.process)

    def count(self, switch: str) -> None:
        """Turns callgrind's counting on or off in the server."""
        command = ["callgrind_control", "-i", switch, str(self.process.pid)]
        subprocess.run(command, check=True, capture_output=True)

    def dump(self) -> None:
        """Has callgrind write what it counted so far to `{mode}.callgrind.1`, and start over."""
        command = ["callgrind_control", "-d", str(self.process.pid)]
        subprocess.run(command, check=True, capture_output=True)

    def counted(self) -> int:
        """The instructions callgrind counted, dumps included, once the server has exited."""
        processes.stop(self.process)
        assert self.process.stderr is not None
        return processes.callgrind_total(self.process.stderr.read())


def key_stream() -> Iterator[str]:
    return itertools.cycle([f"user-{i}" for i in range(KEYS)])


def workloads(
    workdir: Path, mode: str, keys: Iterator[str] | None = None, timeout: float = 10.0
) -> tuple[dict[str, Callable[[], Awaitable[Any]]], Any]:
    """The calls of each workload against the `mode` sidecar, and what to close after."""
    channel = grpc.aio.insecure_channel(f"unix://{workdir / f'{mode}.sock'}")
    stub = pb_grpc.EvaluationServiceStub(channel)
    lane = AsyncLane(str(workdir / f"{mode}.lane"), timeout=timeout)
    keys = keys or key_stream()
    attrs = {
        "plan": pb.AttributeValue(string_value="pro"),
        "age": pb.AttributeValue(int_value=30),
        "country": pb.AttributeValue(string_value="fr"),
    }

    def one() -> Awaitable[Any]:
        request = pb.GetTreatmentRequest(key=next(keys), flag="new-checkout", attributes=attrs)
        return cast(Awaitable[Any], stub.GetTreatment(request, timeout=timeout))

    def batch() -> Awaitable[Any]:
        items = [pb.BatchItem(key=next(keys), flag="new-checkout") for _ in range(BATCH)]
        return cast(
            Awaitable[Any],
            stub.EvaluateBatch(pb.EvaluateBatchRequest(items=items), timeout=timeout),
        )

    def fast() -> Awaitable[Any]:
        request = {"op": "treatment", "key": next(keys), "flag": "new-checkout"}
        return lane.call(request | {"attributes": ATTRIBUTES})

    async def close() -> None:
        await lane.close()
        await channel.close()

    return {"GetTreatment N=8": one, "EvaluateBatch N=8": batch, "fast lane N=64": fast}, close


IN_FLIGHT = {"GetTreatment N=8": 8, "EvaluateBatch N=8": 8, "fast lane N=64": 64}
LOOKUPS_PER_CALL = {"GetTreatment N=8": 1, "EvaluateBatch N=8": BATCH, "fast lane N=64": 1}


# Each cell's --seconds are measured in this many windows, taken in turn with the other
# modes' (off, optimized, debug, then optimized, debug, off, ...): the machine's speed drifts
# over tens of seconds here (other jobs share it), and a mode measured in one stretch of 3 s
# carried that drift into its ratio to the others.
WINDOWS = 5
# Calls kept going before each window after a cell's first (which takes --warmup): the
# server was busy a moment ago, only the in-flight calls need to start again.
WINDOW_WARMUP = 0.1


@dataclass
class Tally:
    """What a cell's windows measured, summed."""

    calls: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def cell(self, workload: str, mode: str) -> Cell:
        lookups = self.calls * LOOKUPS_PER_CALL[workload]
        return Cell(
            workload,
            mode,
            round(self.calls / self.seconds, 1),
            round(lookups / self.seconds, 1),
            round(self.cpu_seconds / max(lookups, 1) * 1e6, 2),
        )


async def measure_window(
    server: Server,
    workload: str,
    call: Callable[[], Awaitable[Any]],
    warmup: float,
    seconds: float,
    tally: Tally,
) -> None:
    latencies, elapsed, cpu = await processes.closed_loop(
        call, IN_FLIGHT[workload], warmup, seconds, server.cpu_seconds
    )
    tally.calls += len(latencies)
    tally.seconds += elapsed
    tally.cpu_seconds += cpu


@dataclass(frozen=True)
class Paired:
    """A mode against `off` over the rounds: each round's ratio taken on its own (the two
    were measured in the same windows' turns), then their median and range."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(ratios: list[float]) -> Paired:
        ordered = sorted(ratios)
        return Paired(ordered[len(ordered) // 2], ordered[0], ordered[-1])

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.low:.2f}-{self.high:.2f})"


def paired(
    rounds: dict[tuple[str, str], list[Cell]], workload: str, mode: str
) -> tuple[Paired, Paired, float]:
    """Lookups/s on ÷ off, server CPU per lookup off ÷ on, and the median extra CPU (µs) a
    lookup costs with `mode` on, each from the rounds' pairs."""
    pairs = list(zip(rounds[workload, "off"], rounds[workload, mode], strict=True))
    lookups = [on.lookups_per_s / max(off.lookups_per_s, 1e-9) for off, on in pairs]
    cpu = [
        off.server_cpu_us_per_lookup / max(on.server_cpu_us_per_lookup, 1e-9) for off, on in pairs
    ]
    extra = sorted(on.server_cpu_us_per_lookup - off.server_cpu_us_per_lookup for off, on in pairs)
    return Paired.of(lookups), Paired.of(cpu), extra[len(extra) // 2]


Ratios = dict[tuple[str, str], tuple[Paired, Paired, float]]


async def run_all(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, int], Ratios]:
    collector, grpc_server, address = await start_collector()
    rounds: dict[tuple[str, str], list[Cell]] = {}
    try:
        for number in range(args.rounds):
            await run_round(args, workdir, collector, address, number, rounds)
    finally:
        await grpc_server.stop(0)
    collector.settle()
    ratios: Ratios = {}
    for workload in IN_FLIGHT:
        for mode in MODES:
            measured = sorted(rounds[workload, mode], key=lambda c: c.lookups_per_s)
            print(format_cell(measured[len(measured) // 2]), flush=True)
            if mode != "off":
                ratios[workload, mode] = paired(rounds, workload, mode)
    return collector.impressions, ratios


async def run_round(
    args: argparse.Namespace,
    workdir: Path,
    collector: CountingCollector,
    address: str,
    number: int,
    rounds: dict[tuple[str, str], list[Cell]],
) -> None:
    """One round on three fresh server processes, so that one process's luck (its memory
    layout, which core it lands on) does not decide a mode's median. Each workload is
    measured in `args.windows` windows per mode, the modes taking turns."""
    servers = {mode: Server(mode, workdir, address) for mode in MODES}
    clients = {mode: workloads(workdir, mode) for mode in MODES}
    try:
        for workload in IN_FLIGHT:
            tallies = {mode: Tally() for mode in MODES}
            for window in range(args.windows):
                turn = (number + window) % 3
                for mode in MODES[turn:] + MODES[:turn]:
                    await measure_window(
                        servers[mode],
                        workload,
                        clients[mode][0][workload],
                        args.warmup if window == 0 else WINDOW_WARMUP,
                        args.seconds / args.windows,
                        tallies[mode],
                    )
                    collector.settle()
            for mode, tally in tallies.items():
                rounds.setdefault((workload, mode), []).append(tally.cell(workload, mode))
    finally:
        for _, close in clients.values():
            await close()
        # in threads: the collector, on this loop, must still answer a server that is
        # sending its last batch while another one exits
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers.values()))


def format_cell(c: Cell) -> str:
    return (
        f"{c.workload:18} {c.mode:9} {c.lookups_per_s:>10,.0f} lookups/s  "
        f"server CPU {c.server_cpu_us_per_lookup:>6,.2f} µs/lookup"
    )


def summary(received: dict[str, int], ratios: Ratios) -> list[str]:
    lines = [
        "",
        "with impressions on, against off: the median of the rounds' paired ratios (their range)",
        "target: overhead < 10 %, ratio > 0.90",
    ]
    for workload in IN_FLIGHT:
        lines.append(f"  {workload}")
        for mode in ("optimized", "debug"):
            lookups, cpu, extra = ratios[workload, mode]
            lines.append(
                f"    {mode:9}  lookups/s {lookups}   server CPU per lookup {cpu}, {extra:+.2f} µs"
            )
    lines.append(
        "impressions received by the collector: "
        + ", ".join(f"{mode} {count:,}" for mode, count in sorted(received.items()))
    )
    return lines


# Calls counted per workload under callgrind: whole upload batches (5,000 records) in debug.
COUNTED_CALLS = {"EvaluateBatch N=8": 100, "fast lane N=64": 5_000}
INSTRUCTION_KEYS = 1_000
# Before the counted calls, the warm-up's impressions are processed and sent (not counted);
# after them, the pipeline's next turns are (counted).
SETTLE_SECONDS = 3.0
# An idle server is counted this long first: what it does by the clock (the pipeline's turn
# every 50 ms, the health checks) is charged to it per second, which `net` takes off.
IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class Counted:
    """Server instructions per lookup: all counted during the calls and the pipeline's turns
    after them (`raw`), and less what the same server counted idle for as long (`net`).
    Why both: under valgrind a call takes ~50 times as long, so work done by the clock is
    charged ~50 times over to each lookup, more with impressions on (the pipeline's turns)
    than off; `net` is what the lookups themselves cost, `raw` the pessimistic bound."""

    raw: float
    net: float
    idle_per_second: float


async def count_instructions(workdir: Path) -> dict[tuple[str, str], Counted]:
    """Server instructions per lookup, per (workload, mode), counted by callgrind."""
    _, grpc_server, address = await start_collector()
    counted = {}
    try:
        for workload, calls in COUNTED_CALLS.items():
            for mode in MODES:
                (workdir / f"{mode}.callgrind.1").unlink(missing_ok=True)
                server = await asyncio.to_thread(Server, mode, workdir, address, callgrind=True)
                keys = itertools.cycle([f"user-{i}" for i in range(INSTRUCTION_KEYS)])
                calls_of, close = workloads(workdir, mode, keys, timeout=600.0)
                call = calls_of[workload]
                try:
                    warmup = INSTRUCTION_KEYS // LOOKUPS_PER_CALL[workload]
                    await fixed_calls(call, warmup, IN_FLIGHT[workload])
                    await asyncio.sleep(SETTLE_SECONDS)
                    idle_seconds = await counted_seconds(server, asyncio.sleep(IDLE_SECONDS))
                    await asyncio.to_thread(server.dump)
                    busy_seconds = await counted_seconds(
                        server, busy(call, calls, IN_FLIGHT[workload])
                    )
                finally:
                    await close()
                total = await asyncio.to_thread(server.counted)
                idle = dumped_total(workdir / f"{mode}.callgrind.1")
                lookups = calls * LOOKUPS_PER_CALL[workload]
                rate = idle / idle_seconds
                cell = Counted(
                    raw=(total - idle) / lookups,
                    net=(total - idle - rate * busy_seconds) / lookups,
                    idle_per_second=rate,
                )
                counted[workload, mode] = cell
                idling = f"{cell.idle_per_second:>9,.0f}/s idle over {busy_seconds:.1f} s"
                print(
                    f"{workload:18} {mode:9} {cell.raw:>10,.0f} instructions/lookup, "
                    f"{cell.net:>8,.0f} net of {idling}"
                )
    finally:
        await grpc_server.stop(0)
    return counted


async def busy(call: Callable[[], Awaitable[Any]], calls: int, in_flight: int) -> None:
    await fixed_calls(call, calls, in_flight)
    await asyncio.sleep(SETTLE_SECONDS)  # the pipeline's next turns: modes, batches, upload


async def counted_seconds(server: Server, work: Awaitable[Any]) -> float:
    """Runs `work` with callgrind counting in the server; how long it ran."""
    await asyncio.to_thread(server.count, "on")
    started = time.monotonic()
    await work
    seconds = time.monotonic() - started
    await asyncio.to_thread(server.count, "off")
    return seconds


def dumped_total(path: Path) -> int:
    """The instructions in a callgrind dump (its "totals:" line)."""
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


async def fixed_calls(call: Callable[[], Awaitable[Any]], calls: int, in_flight: int) -> None:
    left = calls

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(caller() for _ in range(in_flight)))


def instruction_summary(counted: dict[tuple[str, str], Counted]) -> list[str]:
    lines = ["", "server instructions per lookup, off ÷ on (target > 0.90), net (raw):"]
    for workload in COUNTED_CALLS:
        off = counted[workload, "off"]
        parts = [
            f"{mode} {off.net / counted[workload, mode].net:.2f}"
            f" ({off.raw / counted[workload, mode].raw:.2f})"
            for mode in ("optimized", "debug")
        ]
        lines.append(f"  {workload:18} " + "   ".join(parts))
    return lines


# --upload-cost: impressions in one upload, and the pause between uploads (a busy debug
# sidecar sends one every ~25-50 ms)
UPLOAD_SIZES = (1, 5_000, 10_000)
UPLOAD_CALLS = 40
UPLOAD_PAUSE = 0.02


def upload_request(impressions: int) -> bytes:
    """An UploadRequest of `impressions` debug impressions shaped like the benchmark's."""
    request = telemetry_pb2.UploadRequest(batch_id="b" * 32, sidecar_id="debug")
    for i in range(impressions):
        request.impressions.add(
            key=f"user-{i % KEYS}",
            flag="new_checkout",
            treatment="on",
            label="default rule",
            change_number=1_700_000_000_000,
            time_ms=1_700_000_000_000 + i,
            previous_time_ms=1_700_000_000_000,
            snapshot_version=1,
        )
    return request.SerializeToString()


async def upload_child(collector: str) -> None:
    """Sends uploads of each size through the sidecar's own Uploader, paced as a busy sidecar
    sends them, and prints this process's CPU time per upload (median): the sender's cost,
    the collector being another process."""
    uploader = Uploader(collector, timeout=10.0)
    for size in UPLOAD_SIZES:
        request = upload_request(size)
        spent = []
        for call in range(-5, UPLOAD_CALLS):  # 5 first: the channel connected, windows grown
            await asyncio.sleep(UPLOAD_PAUSE)
            started = time.process_time()
            answer = await uploader.send(request)
            if call >= 0:
                spent.append(time.process_time() - started)
            if answer.verdict is not Verdict.STORED:
                raise RuntimeError(f"an upload failed: {answer.code} {answer.detail}")
        spent.sort()
        print(size, len(request), spent[len(spent) // 2], flush=True)
    await uploader.close()


async def upload_cost() -> list[str]:
    """What one upload costs its sender, by size: is it the call or the bytes?"""
    collector, server, address = await start_collector()
    env = processes.child_env()
    command = [sys.executable, "-m", "benchmarks.impressions_bench", "upload-child", address]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    output, _ = await asyncio.to_thread(child.communicate)
    await server.stop(None)
    if child.returncode != 0:
        raise RuntimeError(f"the uploading child failed (exit {child.returncode})")
    collector.settle()
    sent = sum(size * (UPLOAD_CALLS + 5) for size in UPLOAD_SIZES)
    if collector.impressions.get("debug") != sent:
        raise RuntimeError(f"the collector counted {collector.impressions}, not {sent}")
    rows = [line.split() for line in output.splitlines()]
    fixed = float(rows[0][2])
    lines = [
        f"one upload's CPU time in the sender (median of {UPLOAD_CALLS}, "
        f"{UPLOAD_PAUSE * 1000:.0f} ms apart), by impressions in it:"
    ]
    for count, size, seconds in rows:
        impressions, spent = int(count), float(seconds)
        per = (spent - fixed) / impressions * 1e9 if impressions > 1 else 0.0
        lines.append(
            f"  {impressions:6,} impressions {int(size):9,} bytes  {spent * 1e6:7.0f} µs"
            f"  ({spent / fixed:.2f}x the 1-impression upload; "
            f"{per:.0f} ns an impression beyond it)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        uvloop.run(serve(argv[1], Path(argv[2]), argv[3]))
        return 0
    if argv[:1] == ["upload-child"]:
        uvloop.run(upload_child(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s (about 40 s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument(
        "--windows", type=int, default=WINDOWS, help="windows per cell, modes taking turns"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count server instructions (valgrind)"
    )
    parser.add_argument(
        "--upload-cost", action="store_true", help="one upload's CPU time, by size (~15 s)"
    )
    args = parser.parse_args(argv)
    if args.upload_cost:
        print("\n".join(uvloop.run(upload_cost())))
        return 0
    if args.quick:
        args.rounds, args.seconds, args.windows = 1, 1.0, 1
    workdir = Path(tempfile.mkdtemp(prefix="fader-imp-bench-"))
    try:
        if args.instructions:
            counted = uvloop.run(count_instructions(workdir))
            print("\n".join(instruction_summary(counted)))
            return 0
        received, ratios = uvloop.run(run_all(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(summary(received, ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
