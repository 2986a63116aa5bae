"""An evaluation core for unit tests, with small limits unless told otherwise."""

from __future__ import annotations

from sidecar.core import Core
from sidecar.core.evaluator import Evaluator
from sidecar.core.events import EventQueue
from sidecar.delivery.store import Store
from sidecar.limits import RequestLimits
from sidecar.telemetry.impressions import Recorder
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.pipeline import Pipeline


def core_for(
    store: Store,
    *,
    metrics: Metrics | None = None,
    recorder: Recorder | None = None,
    limits: RequestLimits | None = None,
    pipeline: Pipeline | None = None,
) -> Core:
    metrics = metrics or Metrics(lambda: store.current)
    limits = limits or RequestLimits(max_attributes=10, max_attribute_size=100, max_batch_items=10)
    return Core.build(Evaluator(store, metrics, recorder), limits, EventQueue(metrics, pipeline))
