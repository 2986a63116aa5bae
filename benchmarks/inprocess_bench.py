"""In-process lookups against the engine alone and against gRPC, with impressions off, in
optimized mode and in debug mode, in one run.

Run: ``python -m benchmarks.inprocess_bench`` (about 1 minute; ``--quick`` about 20 s).

Three `fader serve` child processes serve the same snapshot on Unix sockets: ``off`` (no
collector, so clients record no impressions), ``optimized`` and ``debug`` (uploading to a
counting collector, another child process). This process holds one in-process client per
sidecar (`fader.Client(target, mode="in-process")`) and a remote one on ``off``, and times,
in interleaved rounds:

- the engine alone: ``Snapshot.evaluate`` on the snapshot the in-process client compiled;
- ``get_treatment`` in process, impressions off / optimized / debug: blocks of calls, the
  per-call time of each block; the round's figure is its median block (the latency a caller
  sees), and its throughput over the whole round, which also pays for the client's
  exposures thread (it turns recorded lookups into impressions and sends them): the round
  ends once that thread has made the impressions of every lookup recorded. Then, uncharged,
  the benchmark waits until the sidecar has them and a little more, so that one mode's
  backlog (in debug mode, hundreds of thousands of impressions for the client, its sidecar
  and the collector) does not slow the next measurement down;
- ``get_treatment`` over gRPC (the remote client on a Unix socket, one call in flight): the
  median call.

Memory (`--memory`): a client process holding a 10,000-flag snapshot in process (the
snapshot benchmark's flags, each with a whitelist, a segment and a two-attribute condition;
100 segments of 100 keys: the large segments of that benchmark are data, not flags); its RSS
is read before the in-process client is created (gRPC already loaded and used) and once the
snapshot answers, after a garbage collection.

Keys rotate over a pool of 50,000, so that optimized mode both sends first impressions and
counts repeats. Figures are medians over rounds; ratios are taken per round, then the median.
The lookup is the engine benchmark's case (b): a flag whose condition has three attribute
matchers (WHITELIST, >=, boolean), with the attributes plan, age and beta.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import msgpack
from fader import Client
from fader.pb.fader.v1 import telemetry_pb2, telemetry_pb2_grpc

from benchmarks import processes, snapshot_bench
from benchmarks.engine_bench import ATTRS, DOCUMENT

REPO = Path(__file__).resolve().parent.parent
MODES = ("off", "optimized", "debug")
FLAG = "b-three-attributes"
KEYS = [f"user-{i}" for i in range(50_000)]
BLOCK = 2_000
# after a window with impressions on: more than the client's sending interval (1 s), then a
# pause for the sidecar and the collector
FLUSH_WAIT = 1.1
SETTLE = 0.5


# ---------------------------------------------------------------- children


def collector_child(port: int) -> None:
    """Counts the impressions, counts and unique keys uploaded; prints them at SIGTERM."""
    received = {"impressions": 0, "counts": 0, "unique_keys": 0}

    class Counting(telemetry_pb2_grpc.TelemetryServiceServicer):
        def Upload(
            self, request: telemetry_pb2.UploadRequest, context: grpc.ServicerContext
        ) -> telemetry_pb2.UploadResponse:
            received["impressions"] += len(request.impressions)
            received["counts"] += sum(c.count for c in request.counts)
            received["unique_keys"] += sum(len(u.keys) for u in request.unique_keys)
            return telemetry_pb2.UploadResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    telemetry_pb2_grpc.add_TelemetryServiceServicer_to_server(Counting(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    signal.sigwait({signal.SIGTERM})
    server.stop(0)
    print(json.dumps(received), flush=True)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "clients" / "python")])
    return env


@contextmanager
def collector(port: int) -> Iterator[dict[str, int]]:
    """The collector child; the dict it yields is filled with its totals when it stops."""
    command = [sys.executable, "-m", "benchmarks.inprocess_bench", "collector", str(port)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=child_env()
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "READY":
        raise RuntimeError("the collector did not start")
    totals: dict[str, int] = {}
    try:
        yield totals
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        totals.update(json.loads(out.strip().splitlines()[-1]))


@contextmanager
def sidecar(mode: str, workdir: Path, snapshot: Path, port: int) -> Iterator[str]:
    """`fader serve` on a Unix socket; yields its gRPC target."""
    sock = workdir / f"{mode}.sock"
    args = [
        "--snapshot", str(snapshot), "--grpc-listen", "off", "--uds", str(sock),
        "--mgmt-listen", "off", "--sync-listen", "off", "--ofrep-listen", "off",
        "--sidecar-id", mode,
    ]  # fmt: skip
    if mode != "off":
        args += ["--collector", f"127.0.0.1:{port}", "--impressions-mode", mode]
        args += ["--spool-dir", str(workdir / f"spool-{mode}")]
    log = (workdir / f"{mode}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=child_env(),
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"listening grpc=", (workdir / f"{mode}.log").read_text()):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((workdir / f"{mode}.log").read_text())
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        processes.stop(process)
        log.close()


# ---------------------------------------------------------------- measurement


def blocks(
    call: Callable[[str], object], seconds: float, after: Callable[[], object] = lambda: None
) -> tuple[float, float]:
    """Calls `call` for `seconds`, in blocks of BLOCK keys; (median block µs per call,
    µs per call over the whole window, `after()` included)."""
    keys, per_call = KEYS, []
    position, calls = 0, 0
    clock = time.perf_counter_ns
    started = clock()
    end = started + int(seconds * 1e9)
    while True:
        chunk = keys[position : position + BLOCK]
        position = (position + BLOCK) % len(keys)
        begin = clock()
        for key in chunk:
            call(key)
        done = clock()
        per_call.append((done - begin) / len(chunk) / 1000)
        calls += len(chunk)
        if done >= end:
            after()
            return statistics.median(per_call), (clock() - started) / calls / 1000


def taken(client: Client) -> Callable[[], None]:
    """Waits until the client's exposures thread has taken every lookup recorded and made
    their impressions (it takes and makes them holding its lock): the work a longer window
    would have paid for while calling, charged to the window that recorded them."""
    state = client.in_process
    assert state is not None

    def wait() -> None:
        local = state.local
        while local is not None and local.pending:
            time.sleep(0.001)
        with state._lock:
            pass

    return wait


def settle(client: Client) -> None:
    """Waits, uncharged, until the sidecar has every batch the client sealed, then SETTLE
    seconds for it to hand them on: one mode's backlog (in debug mode, hundreds of thousands
    of impressions for the client, the sidecar and the collector) must not slow down the
    next measurement, on 2 shared cores."""
    state = client.in_process
    assert state is not None
    time.sleep(FLUSH_WAIT)  # the exposures thread seals and sends once a second
    deadline = time.monotonic() + 10
    while state.status().exposures_waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(SETTLE)


def grpc_median(client: Client, calls: int) -> float:
    """Median µs of single GetTreatment calls over gRPC."""
    latencies = []
    clock = time.perf_counter_ns
    for key in KEYS[:calls]:
        begin = clock()
        client.get_treatment(key, FLAG, ATTRS)
        latencies.append((clock() - begin) / 1000)
    return statistics.median(latencies)


def lookup(get: Callable[[str, str, Any], object]) -> Callable[[str], object]:
    """One lookup of the benchmark's flag for a key, through `get` (one frame, as for the
    engine's own figure)."""

    def call(key: str) -> object:
        return get(key, FLAG, ATTRS)

    return call


def run(args: argparse.Namespace, workdir: Path) -> None:
    snapshot = workdir / "snapshot.json"
    snapshot.write_text(json.dumps(DOCUMENT))
    port = free_port()
    with ExitStack() as stack:
        totals = stack.enter_context(collector(port))
        local: dict[str, Client] = {}
        for mode in MODES:
            target = stack.enter_context(sidecar(mode, workdir, snapshot, port))
            local[mode] = stack.enter_context(Client(target, timeout=5.0, mode="in-process"))
        remote = stack.enter_context(Client(f"unix://{workdir / 'off.sock'}", timeout=5.0))
        for mode, client in local.items():
            state = client.in_process
            assert state is not None and state.ready.wait(30), mode
            assert state.status().impressions_mode == ("" if mode == "off" else mode)
        figures = measure(args, local, remote)
        for client in local.values():
            client.close()
        statuses = {
            mode: client.in_process.status() for mode, client in local.items() if client.in_process
        }
    report(args, figures, statuses, totals)


def measure(
    args: argparse.Namespace, local: dict[str, Client], remote: Client
) -> dict[str, list[float]]:
    state = local["off"].in_process
    assert state is not None and state.local is not None
    evaluate = state.local.snapshot.evaluate
    engine = lookup(lambda key, flag, attributes: evaluate(key, flag, None, attributes))
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    for number in range(args.rounds):
        note("engine", blocks(engine, args.seconds)[0])
        for mode in MODES[number % 3 :] + MODES[: number % 3]:
            client = local[mode]
            median, mean = blocks(lookup(client.get_treatment), args.seconds, taken(client))
            note(f"in-process {mode} median", median)
            note(f"in-process {mode} mean", mean)
            if mode != "off":
                settle(client)
        note("gRPC median", grpc_median(remote, args.grpc_calls))
        base = figures["in-process off mean"][-1]
        for mode in ("optimized", "debug"):
            note(f"ratio {mode}", base / figures[f"in-process {mode} mean"][-1])
        note("ratio gRPC", figures["gRPC median"][-1] / figures["in-process off median"][-1])
        last = ", ".join(f"{name} {values[-1]:.3f}" for name, values in figures.items())
        print(f"round {number + 1}: {last}", flush=True)
    return figures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report(
    args: argparse.Namespace,
    figures: dict[str, list[float]],
    statuses: dict[str, Any],
    totals: dict[str, int],
) -> None:
    median = {name: statistics.median(values) for name, values in figures.items()}
    print()
    print(
        f"in-process benchmark: Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; {args.rounds} rounds of {args.seconds} s per "
        "measurement; medians over rounds"
    )
    print(f"  engine alone (Snapshot.evaluate)          {median['engine']:8.3f} µs")
    for mode in MODES:
        print(
            f"  get_treatment in process, impressions {mode:9} "
            f"{median[f'in-process {mode} median']:8.3f} µs median block, "
            f"{median[f'in-process {mode} mean']:.3f} µs per call over the round"
        )
    print(f"  get_treatment over gRPC (UDS, 1 in flight) {median['gRPC median']:8.1f} µs median")
    print(f"  gRPC ÷ in process (impressions off)        {median['ratio gRPC']:8.0f}x")
    for mode in ("optimized", "debug"):
        print(f"  in-process lookups/s, {mode} ÷ off         {median[f'ratio {mode}']:8.2f}")
    for mode, status in statuses.items():
        print(
            f"  {mode}: exposures sent {status.exposures_sent:,}, waiting "
            f"{status.exposures_waiting:,}, dropped {status.exposures_dropped:,}"
        )
    print(f"  collector received: {totals}")


MEMORY_SEGMENT_KEYS = 100


def memory_child(target: str) -> None:
    """Prints this process's RSS (MB) without and with an in-process client's snapshot."""
    with Client(target, timeout=5.0) as warm:  # gRPC loaded and a channel used: not counted
        warm.get_treatment("u", "flag-0")
    gc.collect()
    before = rss_mb()
    client = Client(target, timeout=5.0, mode="in-process")
    assert client.in_process is not None and client.in_process.ready.wait(120)
    local = client.in_process.local
    assert local is not None and local.snapshot.flag_count == snapshot_bench.FLAGS
    gc.collect()
    print(json.dumps({"before": before, "after": rss_mb()}), flush=True)
    client.close()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_document() -> dict[str, Any]:
    """The snapshot benchmark's document with 100 keys a segment, and each flag's key
    whitelist its own (there every flag lists the same five keys, which a client sharing
    equal whitelists across flags would hold once: real flags list different testers)."""
    snapshot_bench.KEYS_PER_SEGMENT = MEMORY_SEGMENT_KEYS
    document = snapshot_bench.document(1)
    for index, flag in enumerate(document["flags"]):
        data = flag["conditions"][0]["matcherGroup"]["matchers"][0]["whitelistMatcherData"]
        data["whitelist"] = [f"tester-{index}-{j}" for j in range(len(data["whitelist"]))]
    return document


def memory(workdir: Path) -> None:
    path = workdir / "flags.msgpack"
    path.write_bytes(msgpack.packb(memory_document()))
    with sidecar("off", workdir, path, 0) as target:
        command = [sys.executable, "-m", "benchmarks.inprocess_bench", "memory-child", target]
        out = subprocess.run(
            command, capture_output=True, text=True, cwd=REPO, env=child_env(), check=True
        ).stdout
    rss = json.loads(out.strip().splitlines()[-1])
    print(
        f"memory: {snapshot_bench.FLAGS:,} flags ({path.stat().st_size / 1e6:.1f} MB msgpack): "
        f"client RSS {rss['before']:.0f} MB before, {rss['after']:.0f} MB holding it in "
        f"process: +{rss['after'] - rss['before']:.0f} MB (target < 100 MB)"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["memory-child"]:
        memory_child(argv[1])
        return 0
    if argv[:1] == ["collector"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        collector_child(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--grpc-calls", type=int, default=500)
    parser.add_argument("--memory", action="store_true", help="only the memory check")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.grpc_calls = 3, 0.5, 200
    workdir = Path(tempfile.mkdtemp(prefix="fdr-inproc-", dir="/tmp"))
    try:
        if args.memory:
            memory(workdir)
        else:
            run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
