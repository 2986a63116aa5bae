"""A synthetic service for guardrail demos and end-to-end tests: users arrive, the service asks
its Fader sidecar for two flags, and reports `error` and `latency` Track events.

Each new user (``user-<seed>-<n>``, every one seen once) is looked up for every flag in one
GetTreatments call, then sends an ``error`` event with probability ``--base-error``, raised by
``--harm`` for each ``--harmful`` flag serving it ``on``, and a ``latency`` event whose value
is about ``--latency`` ms (plus ``--harm-latency`` for each harmful ``on``). So a harmful flag's
``on`` treatment really does raise the error rate, and the guardrails see it in the data the
sidecar uploads, exactly as for a real service.

Runs until ``--duration`` seconds pass or SIGTERM/SIGINT; prints one JSON line per
``--report`` seconds and a final one: users, and per flag the users per treatment.

Usage: python tools/synthetic_service.py --sidecar 127.0.0.1:8013 --flags a,b --harmful a
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fader import Client


@dataclass
class Tally:
    users: int = 0
    errors: int = 0
    failures: int = 0  # lookups or events the sidecar did not take
    treatments: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "users": self.users,
            "errors": self.errors,
            "failures": self.failures,
            "treatments": self.treatments,
        }


@dataclass(frozen=True)
class Behaviour:
    flags: tuple[str, ...]
    harmful: frozenset[str]
    base_error: float
    harm: float
    latency: float
    harm_latency: float


def serve_user(client: Client, key: str, how: Behaviour, rng: random.Random, tally: Tally) -> None:
    """One user's visit: look the flags up, then report what the visit did."""
    treatments = client.get_treatments(key, how.flags)
    tally.users += 1
    harmful_on = 0
    for flag in how.flags:
        treatment = treatments.get(flag, "control")
        counts = tally.treatments.setdefault(flag, {})
        counts[treatment] = counts.get(treatment, 0) + 1
        if flag in how.harmful and treatment == "on":
            harmful_on += 1
    if rng.random() < min(1.0, how.base_error + how.harm * harmful_on):
        tally.errors += 1
        if not client.track(key, "user", "error"):
            tally.failures += 1
    latency = max(1.0, rng.gauss(how.latency, how.latency * 0.15) + how.harm_latency * harmful_on)
    if not client.track(key, "user", "latency", latency):
        tally.failures += 1


def run(
    sidecar: str,
    how: Behaviour,
    *,
    duration: float,
    rate: float,
    seed: int,
    report: float,
    stop: threading.Event,
) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    started = time.monotonic()
    next_report = started + report
    with Client(sidecar, timeout=5.0) as client:
        n = 0
        while not stop.is_set() and time.monotonic() - started < duration:
            serve_user(client, f"user-{seed}-{n}", how, rng, tally)
            n += 1
            if rate > 0:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    stop.wait(ahead)
            if time.monotonic() >= next_report:
                print(json.dumps(tally.to_json()), flush=True)
                next_report += report
    return tally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecar", default="127.0.0.1:8013", metavar="HOST:PORT")
    parser.add_argument("--flags", required=True, help="comma-separated flags to look up")
    parser.add_argument("--harmful", default="", help="comma-separated flags whose on hurts")
    parser.add_argument("--base-error", type=float, default=0.05, help="error rate of a visit")
    parser.add_argument("--harm", type=float, default=0.25, help="error rate added by harm")
    parser.add_argument("--latency", type=float, default=120.0, help="mean latency (ms)")
    parser.add_argument("--harm-latency", type=float, default=40.0, help="latency added (ms)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--rate", type=float, default=0.0, help="users per second (0: no cap)")
    parser.add_argument("--report", type=float, default=5.0, help="seconds between reports")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    flags = tuple(f for f in args.flags.split(",") if f)
    harmful = frozenset(f for f in args.harmful.split(",") if f)
    if not flags or not harmful <= set(flags):
        print("synthetic service: --harmful flags must be among --flags", file=sys.stderr)
        return 2
    how = Behaviour(flags, harmful, args.base_error, args.harm, args.latency, args.harm_latency)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    tally = run(
        args.sidecar,
        how,
        duration=args.duration,
        rate=args.rate,
        seed=args.seed,
        report=args.report,
        stop=stop,
    )
    print(json.dumps({"final": True, **tally.to_json()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
