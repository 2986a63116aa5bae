"""Ground truth for Fader's rule engine: Split's own Python SDK evaluator, driven offline.

This is the "--mode engine" route of split-semantics.md §8. The document is parsed with
``splits.from_raw`` / ``rule_based_segments.from_raw`` / ``segments.from_raw`` and stored
with ``update_feature_flag_storage`` / ``update_rule_based_segment_storage`` /
``InMemorySegmentStorage.put`` -- exactly what the SDK's polling synchronizers do
(``splitio/sync/split.py``, ``splitio/sync/segment.py``). Evaluation goes through
``EvaluationDataFactory.context_for`` + ``Evaluator.eval_with_context``, as
``splitio/client/client.py`` ``_get_treatment`` does. The localhost factory is avoided on
purpose: its JSON sanitizer rewrites algo, seeds and trailing conditions (§8 caveats).

Nothing here opens a socket or starts a thread: no factory, no synchronizer, no task is
built. :func:`offline` makes any accidental socket use fail loudly anyway.
"""

from __future__ import annotations

import copy
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from splitio.engine.evaluator import EvaluationDataFactory, Evaluator
from splitio.engine.splitters import Splitter
from splitio.models import rule_based_segments, segments, splits
from splitio.models.fallback_config import FallbackTreatmentCalculator
from splitio.storage.inmemmory import (
    InMemoryRuleBasedSegmentStorage,
    InMemorySegmentStorage,
    InMemorySplitStorage,
)
from splitio.util.storage_helper import (
    update_feature_flag_storage,
    update_rule_based_segment_storage,
)

Result = tuple[str, str | None, str | None]

# What the SDK client answers when the evaluator raises a RuntimeError
# (splitio/client/client.py: ClientBase._FAILED_EVAL_RESULT, label Label.EXCEPTION).
_EXCEPTION_RESULT: Result = ("control", "exception", None)


class NetworkBlockedError(RuntimeError):
    """Raised instead of any socket operation while :func:`offline` is active."""


class _DiscardQueue:
    """Stands in for the SDK's internal event queue, which only an SDK-ready task would read.

    The 10.7.0 storages push an event notification on every update; with no consumer a real
    ``queue.Queue`` would just grow, so the notifications are dropped.
    """

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        """Drop the notification."""


class Oracle:
    """Evaluates a Fader snapshot document with splitio-client's own engine."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        """Load flags, rule-based segments and segments the way the SDK's synchronizers do."""
        document = copy.deepcopy(dict(document))  # from_raw mutates rule-based segments
        version = int(document.get("version", -1))
        events = _DiscardQueue()
        self._flags = InMemorySplitStorage(events)
        self._segments = InMemorySegmentStorage(events)
        self._rbs = InMemoryRuleBasedSegmentStorage(events)
        update_rule_based_segment_storage(
            self._rbs,
            [rule_based_segments.from_raw(raw) for raw in document.get("ruleBasedSegments") or []],
            version,
        )
        update_feature_flag_storage(
            self._flags, [splits.from_raw(raw) for raw in document.get("flags") or []], version
        )
        for name, keys in (document.get("segments") or {}).items():
            raw_segment = {"name": name, "added": list(keys), "removed": [], "till": version}
            self._segments.put(segments.from_raw(raw_segment))
        self._evaluator = Evaluator(Splitter(), FallbackTreatmentCalculator(None))
        self._context = EvaluationDataFactory(self._flags, self._segments, self._rbs)

    def evaluate(
        self,
        key: str,
        flag: str,
        bucketing_key: str | None,
        attributes: dict[str, Any] | None,
    ) -> Result:
        """Return (treatment, label, config) as the SDK client would record and return them.

        Mirrors ``Client._get_treatment`` after input validation: fetch the evaluation
        context for the matching key, evaluate, and turn a RuntimeError into the
        control/"exception" result the client substitutes.
        """
        try:
            ctx = self._context.context_for(key, [flag])
            result = self._evaluator.eval_with_context(key, bucketing_key, flag, attributes, ctx)
        except RuntimeError:
            return _EXCEPTION_RESULT
        impression = result["impression"]
        return result["treatment"], impression["label"], result["configurations"]


def _blocked(*args: object, **kwargs: object) -> Any:
    """Refuse a socket operation; the oracle must never reach the network."""
    raise NetworkBlockedError(f"network access attempted during an offline test: {args!r}")


@contextmanager
def offline() -> Iterator[None]:
    """Block socket connect/getaddrinfo while the oracle runs, and check it starts no thread.

    The SDK's evaluator and in-memory storages need neither; if a future SDK version did,
    the differential test would fail here instead of silently talking to Split's servers.
    """
    patched: list[tuple[object, str, object]] = [
        (socket.socket, "connect", socket.socket.connect),
        (socket.socket, "connect_ex", socket.socket.connect_ex),
        (socket, "create_connection", socket.create_connection),
        (socket, "getaddrinfo", socket.getaddrinfo),
    ]
    threads_before = set(threading.enumerate())
    for owner, name, _original in patched:
        setattr(owner, name, _blocked)
    try:
        yield
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
    new_threads = [t for t in threading.enumerate() if t not in threads_before]
    if new_threads:
        raise AssertionError(f"the SDK oracle started threads: {new_threads!r}")
