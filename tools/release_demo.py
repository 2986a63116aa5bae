"""`make demo-release`: guardrails at work on two releases, with real processes.

Starts a control plane (flag store, collector, exposure store, the guardrail loop every
second), a sidecar fed by it, and tools/synthetic_service.py, which looks two flags up for
every new user and sends `error` and `latency` events. `checkout-v2`'s `on` raises the error
rate; `search-v2`'s does nothing. A rollout plan ramps both (5, 20, 50, 100 %, 5 s a step).
The guardrails kill checkout-v2 and let search-v2 complete; the release page shows why.

Prints the page's address and every decision as it is made, then runs until Ctrl-C
(``--exit-when-done``: stop once both releases are decided; ``--screenshot PNG``: save the
harmful release's page from headless Chromium first).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "clients" / "python")]

from sidecar.controlplane.apiclient import ApiClient, ApiError, flag_path  # noqa: E402

HARMFUL, HEALTHY = "checkout-v2", "search-v2"
DATA = REPO / ".fader-demo-release"


def flag(name: str, seed: int) -> dict[str, Any]:
    """A flag at 0 % on; each its own seed, so the two releases reach different users."""
    return {
        "name": name,
        "trafficTypeName": "user",
        "seed": seed,
        "trafficAllocation": 100,
        "trafficAllocationSeed": seed // 3,
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "conditions": [
            {
                "conditionType": "ROLLOUT",
                "matcherGroup": {
                    "combiner": "AND",
                    "matchers": [
                        {
                            "keySelector": {"trafficType": "user", "attribute": None},
                            "matcherType": "ALL_KEYS",
                            "negate": False,
                        }
                    ],
                },
                "partitions": [{"treatment": "on", "size": 0}, {"treatment": "off", "size": 100}],
                "label": "default rule",
            }
        ],
    }


@contextlib.contextmanager
def process(args: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)


def wait_until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiError, OSError):
            if check():
                return
        time.sleep(0.2)
    raise SystemExit(f"release demo: timed out waiting for {what}")


def configure(api: ApiClient, hold: float) -> None:
    api.post(
        "/api/v1/apply",
        {
            "document": [flag(HARMFUL, 1_111_111), flag(HEALTHY, -987_654_321)],
            "reason": "release demo",
            "author": "demo",
        },
    )
    api.put("/api/v1/metrics/errors", {"event": "error", "kind": "conversion",
                                       "direction": "decrease",
                                       "description": "the visit failed"})  # fmt: skip
    api.put("/api/v1/metrics/latency", {"event": "latency", "kind": "mean",
                                        "direction": "decrease",
                                        "description": "ms per visit"})  # fmt: skip
    for name in (HARMFUL, HEALTHY):
        api.put(f"/api/v1/guardrails/{name}/errors", {"max_regression": 0.02})
        api.put(f"/api/v1/guardrails/{name}/latency", {"max_regression": 60})
        api.post(flag_path(name, "/rollout"),
                 {"steps": [5, 20, 50, 100], "hold_seconds": hold, "treatment": "on",
                  "reason": "release demo", "author": "demo"})  # fmt: skip


def screenshot(url: str, path: Path) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print("no chromium: no screenshot (apt-get install chromium)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="fader-chromium-") as profile:
        subprocess.run(
            [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                f"--screenshot={path}", "--window-size=1200,1450", url,
            ],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
    print(f"screenshot: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8018)
    parser.add_argument("--grpc-port", type=int, default=8017)
    parser.add_argument("--sidecar-port", type=int, default=8013)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds per rollout step")
    parser.add_argument("--rate", type=float, default=300.0, help="users per second")
    parser.add_argument("--exit-when-done", action="store_true")
    parser.add_argument("--screenshot", type=Path, metavar="PNG")
    args = parser.parse_args(argv)
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    server = f"http://127.0.0.1:{args.http_port}"
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    plane_args = [
        "-m", "sidecar", "controlplane", "--data-dir", str(DATA / "plane"),
        "--listen", f"127.0.0.1:{args.grpc_port}", "--http-listen", f"127.0.0.1:{args.http_port}",
        "--guardrail-interval", "1", "--min-sample", "200", "--window", "1h",
        "--public-url", server,
    ]  # fmt: skip
    sidecar_args = [
        "-m", "sidecar", "serve", "--control-plane", f"127.0.0.1:{args.grpc_port}",
        "--grpc-listen", f"127.0.0.1:{args.sidecar_port}", "--mgmt-listen", "127.0.0.1:0",
        "--sidecar-id", "demo-sidecar", "--telemetry-flush-interval", "0.5",
        "--cache-dir", str(DATA / "sidecar"),
    ]  # fmt: skip
    service_args = [
        "tools/synthetic_service.py", "--sidecar", f"127.0.0.1:{args.sidecar_port}",
        "--flags", f"{HARMFUL},{HEALTHY}", "--harmful", HARMFUL, "--duration", "86400",
        "--rate", str(args.rate), "--report", "3600",
    ]  # fmt: skip
    api = ApiClient(server, timeout=10)
    with process(plane_args, DATA / "controlplane.log") as plane:
        wait_until(lambda: api.get("/api/v1/flags") is not None, "the control plane")
        configure(api, args.hold)
        with process(sidecar_args, DATA / "sidecar.log"), process(
            service_args, DATA / "service.log"
        ):  # fmt: skip
            print(
                f"\nFader release demo: two releases ramping under guardrails.\n"
                f"  release page  {server}/releases   ({server}/releases/{HARMFUL})\n"
                f"  JSON          {server}/api/v1/releases/{HARMFUL}\n"
                f"  logs          {DATA}/*.log\n",
                flush=True,
            )
            seen: set[str] = set()
            done_at = None
            while not stopping and plane.poll() is None:
                states = {}
                for name in (HARMFUL, HEALTHY):
                    with contextlib.suppress(ApiError):
                        report = api.get(f"/api/v1/releases/{name}")
                        states[name] = report["state"]
                        for d in report["decisions"]:
                            if d["id"] not in seen and d["kind"] != "hold":
                                seen.add(d["id"])
                                stamp = time.strftime("%H:%M:%S", time.localtime(d["time"]))
                                print(f"{stamp} {name:12} {d['kind']:9} {d['message']}", flush=True)
                kinds = {d.split(":")[1] for d in seen if d.startswith(HEALTHY)}
                decided = states.get(HARMFUL) == "killed" and "complete" in kinds
                if decided and done_at is None:
                    done_at = time.monotonic()
                    print(f"\nDone: {HARMFUL} killed, {HEALTHY} complete. "
                          f"Open {server}/releases/{HARMFUL}", flush=True)  # fmt: skip
                    if args.screenshot is not None:
                        time.sleep(2)  # one more look: the charts end after the decisions
                        screenshot(f"{server}/releases/{HARMFUL}", args.screenshot)
                    if args.exit_when_done:
                        break
                    print("Ctrl-C stops the demo.", flush=True)
                time.sleep(1)
    return 0 if done_at is not None or not args.exit_when_done else 1


if __name__ == "__main__":
    sys.exit(main())
