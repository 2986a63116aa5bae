"""The lock-free metrics: bucket arithmetic, per-thread shards, what a scrape shows."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from prometheus_client import generate_latest

from sidecar.telemetry.metrics import Histogram, Metrics


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert hist.total == 8.65


def test_scrape_without_and_with_a_snapshot() -> None:
    snapshot: list[SimpleNamespace] = []
    metrics = Metrics(lambda: snapshot[0] if snapshot else None)
    key = metrics.register_rpc("svc", "M", "unary")
    metrics.register_rpc("svc", "Never", "server_stream")
    shard = metrics.shard()
    shard.count_evaluation("a", "on", True)
    shard.count_evaluation("a", "on", True)
    shard.count_evaluation("typo", "control", False)
    shard.count_track("accepted")
    shard.rpc(key).finish("OK", 0.0002)
    text = generate_latest(metrics.registry).decode()
    assert 'fader_evaluations_total{flag="a",treatment="on"} 2.0' in text
    assert 'fader_evaluations_total{flag="_unknown",treatment="control"} 1.0' in text
    assert "typo" not in text
    assert "fader_snapshot_active 0.0" in text and "fader_snapshot_version" not in text
    assert 'fader_track_events_total{outcome="accepted"} 1.0' in text
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="M",grpc_service="svc",'
        'grpc_type="unary"} 1.0'
    ) in text
    assert (
        'grpc_server_handling_seconds_bucket{grpc_method="M",grpc_service="svc",'
        'grpc_type="unary",le="0.00025"} 1.0'
    ) in text
    assert (
        'grpc_server_started_total{grpc_method="Never",grpc_service="svc",'
        'grpc_type="server_stream"} 0.0'
    ) in text
    snapshot.append(SimpleNamespace(version=42, loaded_at=0.0, flag_count=3))
    text = generate_latest(metrics.registry).decode()
    assert "fader_snapshot_version 42.0" in text and "fader_snapshot_flags 3.0" in text
    assert "process_cpu_seconds_total" in text


def test_shards_from_many_threads_add_up_exactly() -> None:
    """Each thread writes only its own shard, so no increment is lost without any lock."""
    metrics = Metrics(lambda: None)
    per_thread, threads = 20_000, 8

    def work() -> None:
        shard = metrics.shard()
        for _ in range(per_thread):
            shard.count_evaluation("f", "on", True)
            shard.lookup("GetTreatment").observe(0.0001)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = metrics.merged()
    assert total.evaluations == {("f", "on"): per_thread * threads}
    assert sum(total.lookups["GetTreatment"].counts) == per_thread * threads


def test_answers_counted_per_request_add_up_with_single_counts_and_survive_folding() -> None:
    """`count_answers` counts by (flag, decision) in C; a scrape shows (flag, treatment), an
    unknown flag under UNKNOWN_FLAG, and folding past MAX_DECISIONS loses nothing."""
    from fader.rules.result import NOT_FOUND, Decision

    from sidecar.telemetry import metrics as module

    metrics = Metrics(lambda: None)
    shard = metrics.shard()
    on, on_again = Decision("on", "default rule", None, 1), Decision("on", "in segment", None, 1)
    answers = [("k", None, "a", on), ("k", None, "a", on_again), ("k", "b", "typo", NOT_FOUND)]
    shard.count_answers(answers)
    shard.count_evaluation("a", "on", True)
    expected = {("a", "on"): 3, (module.UNKNOWN_FLAG, "control"): 1}
    assert metrics.merged().evaluations == expected
    bound, module.MAX_DECISIONS = module.MAX_DECISIONS, 1
    try:
        shard.count_answers(answers)  # three distinct pairs: folded, and a fresh counter
        assert not shard.tallies[1]
        shard.count_answers(answers[:1])
        assert len(shard.tallies[1]) == 1
    finally:
        module.MAX_DECISIONS = bound
    expected = {("a", "on"): 6, (module.UNKNOWN_FLAG, "control"): 2}
    assert metrics.merged().evaluations == expected
