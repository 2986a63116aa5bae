"""Small builders for flag JSON, so that tests state only what they are about."""

from __future__ import annotations

from typing import Any


def matcher(
    matcher_type: str, attribute: str | None = None, negate: bool = False, **data: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {"matcherType": matcher_type, "negate": negate, **data}
    raw["keySelector"] = {"trafficType": "user", "attribute": attribute}
    return raw


def condition(
    *matchers: dict[str, Any],
    partitions: dict[str, int] | None = None,
    label: str | None = "rule",
    kind: str | None = "ROLLOUT",
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "matcherGroup": {"combiner": "AND", "matchers": list(matchers) or [matcher("ALL_KEYS")]},
        "partitions": [{"treatment": t, "size": s} for t, s in (partitions or {"on": 100}).items()],
        "label": label,
    }
    if kind is not None:
        raw["conditionType"] = kind
    return raw


def flag(name: str = "f", *conditions: dict[str, Any], **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": name,
        "trafficTypeName": "user",
        "seed": 1314120000,
        "trafficAllocation": 100,
        "trafficAllocationSeed": -1667452163,
        "algo": 2,
        "status": "ACTIVE",
        "killed": False,
        "defaultTreatment": "off",
        "changeNumber": 7,
        "conditions": list(conditions) if conditions else [condition()],
    }
    raw.update(fields)
    return raw


def snapshot_doc(
    *flags: dict[str, Any],
    version: int = 1,
    segments: dict[str, list[str]] | None = None,
    rbs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "version": version,
        "flags": list(flags),
        "segments": segments or {},
        "ruleBasedSegments": rbs or [],
    }
