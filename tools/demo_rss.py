"""Measure the resident memory of `fader serve --demo`, the figure deploy/README.md sizes the
manifests' 64Mi request / 128Mi limit with.

Starts the demo sidecar (every listener it opens by default, on free loopback ports), reads
VmRSS from /proc once it is ready, again after lookups over gRPC, OFREP and the management
port, and VmHWM (the peak) at the end. Linux only (/proc).

Usage: python tools/demo_rss.py [--lookups N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fader import Client

REPO = Path(__file__).resolve().parent.parent
DEMO_FLAGS = ("new-checkout", "beta-banner", "pricing-tier", "ui-theme")
READY_TIMEOUT = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=10_000, help="gRPC lookups (10,000)")
    args = parser.parse_args(argv)
    ports = {name: free_port() for name in ("grpc", "mgmt", "sync", "ofrep")}
    command = [str(Path(sys.executable).parent / "fader"), "serve", "--demo"]
    for name, port in ports.items():
        command += [f"--{name}-listen", f"127.0.0.1:{port}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADER_")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        mgmt = f"http://127.0.0.1:{ports['mgmt']}"
        wait_ready(mgmt)
        ready = kib(proc.pid, "VmRSS")
        lookups(f"127.0.0.1:{ports['grpc']}", f"http://127.0.0.1:{ports['ofrep']}", args.lookups)
        for path in ("/status", "/metrics", "/readyz"):
            urllib.request.urlopen(mgmt + path, timeout=5).read()
        after = kib(proc.pid, "VmRSS")
        peak = kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"fader serve --demo (python {sys.version.split()[0]}, pid {proc.pid}):")
    print(f"  ready:                        VmRSS {mib(ready)}")
    print(f"  after {args.lookups:,} gRPC lookups, OFREP, /status, /metrics: VmRSS {mib(after)}")
    print(f"  peak:                         VmHWM {mib(peak)}")
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(mgmt: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(mgmt + "/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo_rss: the sidecar was not ready within {READY_TIMEOUT:.0f} s")


def lookups(grpc_target: str, ofrep: str, count: int) -> None:
    """Lookups as an application would make them, for varied keys (so caches fill)."""
    with Client(grpc_target) as client:
        for i in range(count):
            client.get_treatment(f"user-{i}", DEMO_FLAGS[i % len(DEMO_FLAGS)], {"plan": "pro"})
    for i in range(100):
        body = json.dumps({"context": {"targetingKey": f"user-{i}"}}).encode()
        request = urllib.request.Request(
            f"{ofrep}/ofrep/v1/evaluate/flags/new-checkout",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        # an error answer is an answer too: memory is what is measured
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=5).read()


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"demo_rss: no {field} in /proc/{pid}/status")


def mib(kibibytes: int) -> str:
    return f"{kibibytes / 1024:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
