"""Churn and fault helpers shared by the tests/integration/test_churn_*.py tests and
benchmarks/churn_bench.py: a large snapshot, pushes to a real `fader serve`, its RSS, streams
that are never read, and lookups that count the answers a client would turn into "control".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgpack
from fader import fastlane
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc, snapshot_pb2
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc

from tests.integration.harness import REPO, ServeProcess, free_port, serve_env

# The deadline fader's clients give a lookup before answering "control" (fader._common).
LOOKUP_DEADLINE = 0.1
_MSGPACK = snapshot_pb2.SNAPSHOT_ENCODING_MSGPACK


def big_flag(i: int, version: int, segments: int) -> dict[str, Any]:
    """A flag with a whitelist, a segment and a two-attribute condition; ``version`` is in its
    definition, so every flag counts as changed from one version to the next."""

    def matcher(kind: str, attribute: str | None, **data: Any) -> dict[str, Any]:
        selector = {"trafficType": "user", "attribute": attribute}
        return {"keySelector": selector, "matcherType": kind, "negate": False, **data}

    def condition(matchers: list[dict[str, Any]], parts: dict[str, int]) -> dict[str, Any]:
        return {
            "conditionType": "ROLLOUT",
            "matcherGroup": {"combiner": "AND", "matchers": matchers},
            "partitions": [{"treatment": t, "size": s} for t, s in parts.items()],
            "label": "rule",
        }

    segment = {"segmentName": f"seg-{i % segments}"}
    return {
        "name": f"flag-{i}",
        "trafficTypeName": "user",
        "seed": (i * 7919) % 2**31,
        "trafficAllocation": 100,
        "trafficAllocationSeed": i,
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "changeNumber": version,
        "configurations": {"on": '{"a":1}'},
        "conditions": [
            condition(
                [matcher("WHITELIST", None, whitelistMatcherData={"whitelist": ["u1", "u2"]})],
                {"on": 100},
            ),
            condition(
                [matcher("IN_SEGMENT", None, userDefinedSegmentMatcherData=segment)],
                {"on": 50, "off": 50},
            ),
            condition(
                [
                    matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["pro"]}),
                    matcher(
                        "GREATER_THAN_OR_EQUAL_TO",
                        "age",
                        unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
                    ),
                ],
                {"on": 10, "off": 90},
            ),
        ],
    }


def big_snapshot(version: int, flags: int, segments: int = 50, keys: int = 100) -> bytes:
    """A msgpack snapshot of ``flags`` flags and ``segments`` segments of ``keys`` keys."""
    doc = {
        "version": version,
        "flags": [big_flag(i, version, segments) for i in range(flags)],
        "segments": {f"seg-{s}": [f"key-{s}-{k}" for k in range(keys)] for s in range(segments)},
        "ruleBasedSegments": [],
    }
    return bytes(msgpack.packb(doc, use_bin_type=True))


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads for process {pid}")


class Pusher:
    """PushSnapshot to a sidecar's admin listener; every push must be accepted."""

    def __init__(self, admin: str) -> None:
        options = [("grpc.max_send_message_length", 256 << 20)]
        self._channel = grpc.insecure_channel(admin, options=options)
        grpc.channel_ready_future(self._channel).result(20)
        self._stub = controlplane_pb2_grpc.SnapshotAdminServiceStub(self._channel)

    def push(self, version: int, document: bytes) -> snapshot_pb2.SnapshotAck:
        return self.push_bytes(version, document, "msgpack")

    def push_bytes(self, version: int, document: bytes, fmt: str) -> snapshot_pb2.SnapshotAck:
        encoding = _MSGPACK if fmt == "msgpack" else snapshot_pb2.SNAPSHOT_ENCODING_JSON
        message = snapshot_pb2.Snapshot(version=version, encoding=encoding, document=document)
        request = controlplane_pb2.PushSnapshotRequest(snapshot=message)
        ack: snapshot_pb2.SnapshotAck = self._stub.PushSnapshot(request, timeout=60)
        assert ack.accepted, ack
        return ack

    def close(self) -> None:
        self._channel.close()


@dataclass
class Pushable:
    """A running `fader serve` with its admin listener, and where it listens."""

    serve: ServeProcess
    grpc_target: str
    mgmt: str
    pusher: Pusher

    @property
    def pid(self) -> int:
        return self.serve.process.pid


@contextlib.contextmanager
def pushable_sidecar(
    log_dir: Path, *extra: str, prefix: Sequence[str] = (), name: str = "serve.log"
) -> Iterator[Pushable]:
    """`fader serve` on loopback with an admin listener for pushes and no snapshot yet."""
    admin = f"127.0.0.1:{free_port()}"
    args = [
        "--admin-listen", admin, "--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0",
        "--max-watch-streams", "4096", *extra,
    ]  # fmt: skip
    with sidecar_process(args, log_dir, prefix=prefix, log_name=name) as serve:
        listening = serve.wait_listening()
        pusher = Pusher(admin)
        try:
            yield Pushable(serve, listening["grpc"], "http://" + listening["mgmt"], pusher)
        finally:
            pusher.close()


@dataclass
class Lookups:
    """Latencies of lookups made one after another, and how many missed the deadline."""

    latencies: list[float] = field(default_factory=list)
    control: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    def summary(self) -> str:
        return (
            f"{self.count} lookups, {self.control} answered control "
            f"({100 * self.control / max(1, self.count):.1f} %), "
            f"p50 {1000 * self.percentile(0.5):.1f} ms, p99 {1000 * self.percentile(0.99):.1f} ms"
        )


class LookupLoad:
    """GetTreatment calls with the clients' deadline, from a thread, until stopped: a call
    that misses the deadline is one a client answers "control"."""

    def __init__(self, target: str, flag: str, pause: float = 0.002) -> None:
        self.result = Lookups()
        self._target, self._flag, self._pause = target, flag, pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> LookupLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        request = pb.GetTreatmentRequest(key="key-1-1", flag=self._flag)
        async with grpc.aio.insecure_channel(self._target) as channel:
            stub = pb_grpc.EvaluationServiceStub(channel)
            await stub.GetTreatment(request, timeout=5)  # connected before measuring
            clock = time.perf_counter
            while not self._stop.is_set():
                started = clock()
                try:
                    await stub.GetTreatment(request, timeout=LOOKUP_DEADLINE)
                except grpc.aio.AioRpcError:
                    self.result.control += 1
                self.result.latencies.append(clock() - started)
                await asyncio.sleep(self._pause)


# A child process that opens server streams and never reads them: in the test process the
# streams would share its GIL with the measuring client.
_UNREAD_STREAMS = """
import sys, grpc
target, method, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(max(1, count // 50))]
streams = [channels[i % len(channels)].unary_stream(method)(b"") for i in range(count)]
for stream in streams:
    stream.initial_metadata()
print("open", flush=True)
sys.stdin.read()
"""
WATCH_CHANGES = "/fader.v1.EvaluationService/WatchChanges"
FLAGD_EVENTS = "/flagd.evaluation.v1.Service/EventStream"


@contextlib.contextmanager
def unread_watch_streams(target: str, count: int, method: str = WATCH_CHANGES) -> Iterator[None]:
    """``count`` streams of ``method`` (an empty request) opened and never read, until the
    block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", _UNREAD_STREAMS, target, method, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=serve_env(),
        cwd=REPO,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "open", "the streams did not open"
        yield
    finally:
        process.kill()
        process.wait(10)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Gate:
    """A TCP forwarder in front of a peer that can be shut and opened again at once: shut, it
    refuses connections and cuts those open (the peer is down, as a sidecar sees it); open, it
    accepts on the same port and forwards. Down and back at exact moments, unlike a process
    that takes a second to start."""

    def __init__(self, port: int, upstream: int) -> None:
        self.port, self._upstream = port, upstream
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
            listener.close()
        with self._lock:
            connections, self._open = self._open, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def sidecar_process(
    args: list[str],
    log_dir: Path,
    *,
    prefix: Sequence[str] = (),
    limit: Callable[[], None] | None = None,
    log_name: str = "serve.log",
) -> Iterator[ServeProcess]:
    """`fader serve ARGS` run behind ``prefix`` (a tracer, say), with ``limit`` applied in the
    child before it starts (resource limits)."""
    log_path = log_dir / log_name
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "sidecar", "serve", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=serve_env(),
            cwd=REPO,
            preexec_fn=limit,
        )
    try:
        yield ServeProcess(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def sidecar_with_small_disk(
    args: list[str], log_dir: Path, max_file_bytes: int
) -> contextlib.AbstractContextManager[ServeProcess]:
    """`fader serve ARGS` that cannot write a file larger than ``max_file_bytes`` (a full
    disk, as far as a write is concerned: it fails with EFBIG; Python ignores SIGXFSZ)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return sidecar_process(args, log_dir, limit=limit, log_name="small-disk.log")


def slow_disk(fsync_seconds: float) -> list[str]:
    """A prefix that makes every fsync and fdatasync of the process take ``fsync_seconds``
    longer (strace's fault injection, filtered by seccomp: other system calls run free)."""
    delay = int(fsync_seconds * 1_000_000)
    return [
        "strace", "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null",
        "-e", "trace=fsync,fdatasync",
        "-e", f"inject=fsync,fdatasync:delay_enter={delay}",
    ]  # fmt: skip


@contextlib.contextmanager
def unread_fastlane(path: Path, connections: int, requests: int) -> Iterator[None]:
    """``connections`` fast-lane clients that each pipeline ``requests`` lookups and never
    read an answer, until the block ends."""
    frames = b"".join(
        fastlane.encode({"id": i, "op": "treatment", "key": f"k{i}", "flag": "flag-1"})
        for i in range(1, requests + 1)
    )
    clients: list[socket.socket] = []
    try:
        for _ in range(connections):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.send(b"FADR\x01" + frames)  # as much as the socket takes
            clients.append(client)
        yield
    finally:
        for client in clients:
            client.close()
