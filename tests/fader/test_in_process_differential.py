"""In-process answers against the sidecar's RPC answers, on random snapshots.

A real sidecar (event loop in a thread) serves each random snapshot of
`tests/fader/rules/strategies.py` (every matcher type, segments, rule-based segments,
prerequisites); an in-process client follows it over WatchSnapshots, and every lookup is
asked of both: of the sidecar over gRPC (EvaluateBatch, one call per snapshot, each item
built and each Result read by the remote client's own code) and of the in-process client.
The Results (treatment, config, label, version) must be equal, and so must the TypeError for
attribute values no client can send. Hypothesis draws a few cases per snapshot; the lookups
mix their flags, bucketing keys and attributes with keys from the snapshot's key pool.
100 snapshots x 200 lookups = 20,000 lookups.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fader import Client, Result, _common
from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.pb.fader.v1 import evaluation_pb2_grpc as pb_grpc
from fader.snapshot.loader import build_snapshot
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.fader.rules.strategies import Case, _harvest, _key_pool, scenarios
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar
from tests.waiting import wait_for

SNAPSHOTS = 100
CASES = 5  # drawn by Hypothesis per snapshot (drawing is what takes time)
LOOKUPS = 200  # per snapshot
SEED = 20_261_202


@pytest.fixture(scope="module")
def sidecar() -> Iterator[RunningSidecar]:
    with running_sidecar(loopback_settings()) as running:
        yield running


def lookups(document: dict[str, Any], cases: list[Case], pick: random.Random) -> list[Case]:
    """The drawn cases, then mixes of their fields with keys of the snapshot's key pool."""
    keys = [case.key for case in cases] + _key_pool(document, _harvest(document)[None])
    mixed = [
        Case(
            key=pick.choice(keys),
            flag=pick.choice(cases).flag,
            bucketing_key=pick.choice(cases).bucketing_key,
            attributes=pick.choice(cases).attributes,
        )
        for _ in range(LOOKUPS - len(cases))
    ]
    return cases + mixed


def remote(stub: pb_grpc.EvaluationServiceStub, cases: list[Case]) -> list[Result | str]:
    """The sidecar's answers, each request item built and each answer read by the remote
    client's own code; a TypeError where that code raises one."""
    answers: list[Result | str] = []
    items: list[pb.BatchItem] = []
    for case in cases:
        try:
            attributes = _common.attribute_map(case.attributes)
        except TypeError as err:
            answers.append(f"TypeError: {err}")
            continue
        answers.append("")  # filled from the batch below
        items.append(
            pb.BatchItem(
                key=case.key,
                flag=case.flag,
                bucketing_key=case.bucketing_key or "",
                attributes=attributes,
            )
        )
    response = stub.EvaluateBatch(pb.EvaluateBatchRequest(items=items), timeout=10)
    evaluated = iter(response.evaluations)
    return [
        answer if answer else _common.result(next(evaluated), response.version)
        for answer in answers
    ]


def local(client: Client, case: Case) -> Result | str:
    try:
        return client.evaluate(
            case.key, case.flag, bucketing_key=case.bucketing_key, attributes=case.attributes
        )
    except TypeError as err:
        return f"TypeError: {err}"


def test_in_process_answers_equal_the_sidecars(sidecar: RunningSidecar) -> None:
    compared: list[int] = []
    versions = iter(range(1, SNAPSHOTS * 10))
    with (
        grpc.insecure_channel(sidecar.tcp_target) as channel,
        Client(sidecar.tcp_target, timeout=5.0, mode="in-process") as client,
    ):
        stub = pb_grpc.EvaluationServiceStub(channel)
        in_process = client.in_process
        assert in_process is not None

        @seed(SEED)
        @settings(
            max_examples=SNAPSHOTS,
            phases=[Phase.generate],
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(scenarios(n_cases=CASES))
        def check(scenario: tuple[dict[str, Any], list[Case]]) -> None:
            document, cases = scenario
            version = next(versions)
            sidecar.store.swap(build_snapshot({**document, "version": version}))
            wait_for(
                lambda: in_process.local is not None and in_process.local.version == version,
                timeout=10,
                what=f"the in-process client at version {version}",
            )
            asked = lookups(document, cases, random.Random(version))
            expected = remote(stub, asked)
            mismatches = [
                (case, want, got)
                for case, want in zip(asked, expected, strict=True)
                if want != (got := local(client, case))
            ]
            compared.append(len(asked))
            assert not mismatches, f"{len(mismatches)} differ, first: {mismatches[0]}"

        check()
        assert client.fallback_count == 0
        assert in_process.remote_lookups == 0
    assert sum(compared) == SNAPSHOTS * LOOKUPS == 20_000
