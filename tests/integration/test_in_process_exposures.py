"""Impressions of in-process lookups reach the collector exactly as RPC lookups' do, in each
impressions mode, across a sidecar restart; real `fader serve` and `fader controlplane`
processes.

One sidecar serves two copies of the same flags, `*_rpc` and `*_local`. A remote client asks
the sidecar for the `_rpc` copies, an in-process client answers the `_local` copies itself
and sends their impressions with RecordExposures; both make the same lookups (repeats
included, so that optimized mode deduplicates, an impressionsDisabled flag, an unknown flag).
Halfway, the sidecar is stopped (SIGTERM) and started again on the same port; the in-process
client makes its first half of the lookups while the sidecar is down (it answers them
itself), holds their impressions, and sends them to the restarted sidecar. At the end what
the collector stored for each copy must be the same: every impression, count, unique key.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fader import Client

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.integration.harness import ServeProcess, free_port, serve_process, short_tmp
from tests.waiting import wait_for

COPIES = ("rpc", "local")
BETA = matcher("WHITELIST", "plan", whitelistMatcherData={"whitelist": ["beta"]})
# (keys, flags) of each phase: keys of the second phase are new, so that neither side's
# impressions observer (the sidecar's restarts, the client's does not) decides alone.
PHASES = (
    ([f"early-{i}" for i in range(25)], ("f", "g", "quiet", "f", "missing", "g")),
    ([f"late-{i}" for i in range(25)], ("g", "f", "quiet", "g", "f")),
)


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def snapshot(path: Path) -> Path:
    flags = []
    for copy in COPIES:
        flags += [
            flag(f"f_{copy}", condition(BETA, partitions={"on": 100}), seed=11),
            flag(f"g_{copy}", condition(partitions={"a": 50, "b": 50}), seed=12),
            flag(f"quiet_{copy}", impressionsDisabled=True, seed=13),
        ]
    path.write_text(json.dumps(snapshot_doc(*flags, version=3)))
    return path


def sidecar(
    tmp: Path, port: int, collector: int, mode: str, name: str, max_batch_items: int
) -> Any:  # a context manager of ServeProcess
    args = [
        "--max-batch-items", str(max_batch_items),
        "--snapshot", str(tmp / "snap.json"),
        "--grpc-listen", f"127.0.0.1:{port}",
        "--mgmt-listen", "127.0.0.1:0",
        "--collector", f"127.0.0.1:{collector}",
        "--impressions-mode", mode,
        "--spool-dir", str(tmp / "spool"),
        "--telemetry-flush-interval", "0.2",
    ]  # fmt: skip
    return serve_process(args, tmp, log_name=name)


def phase(number: int, client: Client, copy: str) -> None:
    keys, flags = PHASES[number]
    for index, key in enumerate(keys):
        attributes = {"plan": "beta"} if index % 3 == 0 else None
        for name in flags:
            treatment = client.get_treatment(key, f"{name}_{copy}", attributes)
            assert treatment != "control" or name == "missing"


def stop(serve: ServeProcess) -> None:
    serve.signal(signal.SIGTERM)
    assert serve.wait(30) == 0, serve.log


def answering(client: Client) -> bool:
    """True once the (restarted) sidecar answers; asks for an unknown flag, which makes no
    impression."""
    return client.evaluate("probe", "missing_rpc").label == "definition not found"


def stored(out: Path, kind: str) -> list[dict[str, Any]]:
    path = out / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def per_copy(out: Path) -> dict[str, tuple[Counter[tuple[Any, ...]], Counter[str], set[Any]]]:
    """For each copy: impressions as (key, flag, treatment, label, change number, bucketing
    key), counts summed per flag, unique (flag, key) pairs; flag names without the copy."""
    found: dict[str, tuple[Counter[tuple[Any, ...]], Counter[str], set[Any]]] = {
        copy: (Counter(), Counter(), set()) for copy in COPIES
    }
    for row in stored(out, "impressions"):
        name, copy = row["flag"].rsplit("_", 1)
        found[copy][0][
            (
                row["key"],
                name,
                row["treatment"],
                row["label"],
                row["change_number"],
                row["bucketing_key"],
            )
        ] += 1
    for row in stored(out, "counts"):
        name, copy = row["flag"].rsplit("_", 1)
        found[copy][1][name] += row["count"]
    for row in stored(out, "unique_keys"):
        name, copy = row["flag"].rsplit("_", 1)
        found[copy][2].update((name, key) for key in row["keys"])
    return found


# (mode, --max-batch-items): 7, so that the client cuts its batches to what the sidecar takes
# in one call (it refuses more, and a refused batch is dropped)
@pytest.mark.parametrize(
    ("mode", "max_batch_items"),
    [("optimized", 10_000), ("debug", 10_000), ("none", 10_000), ("debug", 7)],
)
def test_in_process_impressions_reach_the_collector_like_rpc_ones(
    tmp: Path, mode: str, max_batch_items: int
) -> None:
    snapshot(tmp / "snap.json")
    port, collector, out = free_port(), free_port(), tmp / "out"
    cp_args = [
        "--listen", f"127.0.0.1:{collector}",
        "--forward", str(tmp / "snap.json"),
        "--http-listen", "off",
        *(arg for kind in ("impressions", "counts", "unique_keys")
          for arg in (f"--{kind.replace('_', '-')}-out", str(out / f"{kind}.jsonl"))),
    ]  # fmt: skip
    with serve_process(cp_args, tmp, command="controlplane", log_name="cp.log") as cp:
        with sidecar(tmp, port, collector, mode, "first.log", max_batch_items) as first:
            first.wait_listening()
            remote = Client(f"127.0.0.1:{port}", timeout=5.0)
            local = Client(f"127.0.0.1:{port}", timeout=5.0, mode="in-process")
            in_process = local.in_process
            assert in_process is not None and in_process.ready.wait(10)
            assert in_process.status().impressions_mode == mode
            phase(0, remote, "rpc")
            stop(first)
        phase(0, local, "local")
        wait_for(lambda: in_process.status().exposures_waiting > 0, what="exposures held")
        with sidecar(tmp, port, collector, mode, "second.log", max_batch_items) as second:
            second.wait_listening()
            wait_for(lambda: answering(remote), what="the restarted sidecar")
            phase(1, remote, "rpc")
            phase(1, local, "local")
            local.close()  # sends what it recorded, including what the restart held back
            remote.close()
            stop(second)
        status = in_process.status()
        assert status.exposures_dropped == status.exposures_waiting == 0, status
        assert status.remote_lookups == 0 and local.fallback_count == 0
        expected = per_copy(out)["rpc"]
        wait_for(lambda: per_copy(out)["local"] == expected, timeout=20, what="same records")
        cp.signal(signal.SIGTERM)
        cp.wait(30)
    impressions, counts, unique = per_copy(out)["local"]
    assert counts["quiet"] == 50  # impressionsDisabled: counted in every mode
    assert bool(impressions) is (mode != "none")
    assert {name for name, _ in unique} == ({"f", "g", "quiet"} if mode == "none" else {"quiet"})
    # every lookup of a known flag is one impression or one count: none lost, none twice
    assert sum(impressions.values()) + sum(counts.values()) == 50 * 5
