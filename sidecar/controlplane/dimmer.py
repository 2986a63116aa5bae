"""The dimmer: set one treatment's share of a flag's default rule, never taking it away.

Split buckets a key into 1..100 with the flag's seed and gives it the treatment of the
partition whose cumulative range holds that bucket. Putting the dialled treatment T's
partition *first* makes T own buckets 1..P. Raising P to P' then only adds buckets
P+1..P' to T: a key that has T keeps it. Lowering to P'' takes back buckets P''+1..P, the
ones added last. The seed is never touched, so a key's bucket never moves. The other
treatments share the remaining 100 - P in proportion to what they had.

The one exception is the first dial of a rule whose T partition is not first: moving it
to the front re-buckets once. ``Dialed.rebucketed`` says so, and the API reports it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROLLOUT = "ROLLOUT"


class DialError(ValueError):
    """The flag cannot be dialled as asked; ``path`` is where in its definition."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class Dialed:
    flag: dict[str, Any]
    treatment: str
    percent: int
    rebucketed: bool


@dataclass(frozen=True, slots=True)
class Dial:
    """Where a flag's default rule stands: ``treatment`` gets ``percent``."""

    treatment: str
    percent: int


def default_rule_index(flag: Mapping[str, Any]) -> int | None:
    """Index of the default rule: the last ROLLOUT condition (None when there is none)."""
    conditions = flag.get("conditions")
    if not isinstance(conditions, list):
        return None
    for index in range(len(conditions) - 1, -1, -1):
        condition = conditions[index]
        if isinstance(condition, dict) and condition.get("conditionType") == ROLLOUT:
            return index
    return None


def current_dial(flag: Mapping[str, Any]) -> Dial | None:
    """The first partition of the default rule (what ``dial`` moves), if any."""
    index = default_rule_index(flag)
    if index is None:
        return None
    partitions = flag["conditions"][index].get("partitions") or []
    if not partitions:
        return None
    first = partitions[0]
    return Dial(str(first.get("treatment")), int(first.get("size", 0)))


def dial(flag: Mapping[str, Any], percent: int, treatment: str | None = None) -> Dialed:
    """A copy of ``flag`` whose default rule gives ``treatment`` ``percent`` % of buckets."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise DialError("$", f"percent must be an integer 0..100, got {percent!r}")
    index = default_rule_index(flag)
    if index is None:
        raise DialError("$.conditions", "no ROLLOUT condition (default rule) to dial")
    path = f"$.conditions[{index}].partitions"
    partitions = flag["conditions"][index].get("partitions")
    if not isinstance(partitions, list) or not partitions:
        raise DialError(path, "the default rule has no partitions")
    sizes = _sizes(partitions, path)
    default = flag.get("defaultTreatment")
    target = treatment or next((t for t in sizes if t != default), None)
    if target is None:
        raise DialError(path, "every partition serves the default treatment: name one to dial")
    others = {t: s for t, s in sizes.items() if t != target}
    if not others and isinstance(default, str) and default != target:
        others = {default: 0}
    if not others and percent < 100:
        raise DialError(path, f"no other treatment to give the other {100 - percent} % to")
    shares = _share(100 - percent, others)
    new = copy.deepcopy(dict(flag))
    new["conditions"][index]["partitions"] = [{"treatment": target, "size": percent}] + [
        {"treatment": name, "size": size} for name, size in shares.items()
    ]
    return Dialed(new, target, percent, _rebucketed(partitions, target))


def _sizes(partitions: list[Any], path: str) -> dict[str, int]:
    """Treatment -> total size, in first-appearance order."""
    sizes: dict[str, int] = {}
    for i, partition in enumerate(partitions):
        if not isinstance(partition, dict):
            raise DialError(f"{path}[{i}]", "a partition must be an object")
        name, size = partition.get("treatment"), partition.get("size")
        if not isinstance(name, str) or isinstance(size, bool) or not isinstance(size, int):
            raise DialError(f"{path}[{i}]", "a partition needs a treatment and an integer size")
        sizes[name] = sizes.get(name, 0) + size
    return sizes


def _share(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` (equally when all are 0), as integers
    summing to ``total``: largest remainders get the leftover units, ties by order."""
    names = list(weights)
    weight_sum = sum(weights.values())
    raw = [total * (weights[n] / weight_sum if weight_sum else 1 / len(names)) for n in names]
    sizes = [int(value) for value in raw]
    leftover = total - sum(sizes)
    order = sorted(range(len(names)), key=lambda i: (-(raw[i] - sizes[i]), i))
    for i in order[:leftover]:
        sizes[i] += 1
    return dict(zip(names, sizes, strict=True))


def _rebucketed(partitions: list[Any], target: str) -> bool:
    """True when the buckets that served ``target`` were not exactly 1..its share: moving
    its partition to the front then changes which keys have it."""
    buckets: list[int] = []
    start = 1
    for partition in partitions:
        if partition["treatment"] == target:
            buckets.extend(range(start, start + partition["size"]))
        start += partition["size"]
    return buckets != list(range(1, len(buckets) + 1))
