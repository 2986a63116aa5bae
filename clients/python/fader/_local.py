"""Answers from a snapshot held in this process: the in-process mode's lookups, no I/O.

`LocalSnapshot` wraps one compiled `fader.snapshot.Snapshot` (the engine the sidecar runs)
with the sidecar's own request rules, so that a lookup answered here is the lookup the
sidecar would have answered: the same key and name checks, the same attribute limits, the
same attribute types (a datetime is whole epoch seconds, a collection of strings a list), and
the same "control" for what the sidecar would refuse (INVALID_ARGUMENT, counted as a
fallback by the client). Values the RPC clients cannot send raise TypeError here too.

Every answered lookup of a known flag is appended to `pending` as the sidecar's hot path
records it, `(key, bucketing key, flag, decision)`; the exposures thread applies the
impressions mode later, off the caller's path. Appending to a deque is atomic, so threads
need no lock.
"""

from __future__ import annotations

import calendar
import datetime
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from fader import _decide
from fader._common import CallFailed
from fader.impressions import Answer
from fader.result import Result
from fader.rules.result import NOT_FOUND, Decision
from fader.snapshot.snapshot import Snapshot

# The sidecar's rules (sidecar.core.requests): Split's SDKs refuse longer keys.
MAX_KEY_LENGTH = 250
MAX_NAME_LENGTH = 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_make_result = tuple.__new__


class Limits:
    """The sidecar's request limits, as WatchSnapshots announced them."""

    __slots__ = ("max_attribute_size", "max_attributes", "max_batch_items")

    def __init__(self, max_attributes: int, max_attribute_size: int, max_batch_items: int) -> None:
        self.max_attributes = max_attributes
        self.max_attribute_size = max_attribute_size
        self.max_batch_items = max_batch_items


def invalid(message: str) -> CallFailed:
    """What the sidecar answers a malformed lookup with, so the fallback reads the same."""
    return CallFailed(grpc.StatusCode.INVALID_ARGUMENT, message)


class LocalSnapshot:
    """One snapshot version, ready to answer lookups in this process."""

    __slots__ = ("decide", "limits", "pending", "record", "snapshot", "version")

    def __init__(self, snapshot: Snapshot, limits: Limits, recording: bool) -> None:
        self.snapshot = snapshot
        self.version = snapshot.version
        self.limits = limits
        self.pending: deque[Answer] = deque()
        self.record = self.pending.append if recording else None
        self.decide = make_decide(snapshot, limits, self.record)

    def result(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Mapping[str, Any] | None
    ) -> Result:
        decision = self.decide(key, flag, bucketing_key, attributes)
        return _make_result(Result, (decision[0], decision[2], decision[1], self.version))

    def treatments(
        self,
        key: str,
        names: list[str],
        bucketing_key: str | None,
        attributes: Mapping[str, Any] | None,
    ) -> dict[str, str]:
        """GetTreatments' answer: the named flags (every flag when none is named)."""
        limits = self.limits
        if len(names) > limits.max_batch_items:
            raise invalid(
                f"flags + flag_sets: {len(names)} given, at most {limits.max_batch_items} allowed"
            )
        values = engine_attributes(attributes, limits) if attributes else None
        for index, name in enumerate(names):
            check_name(name, f"flags[{index}]")
        check_key(key)
        bucketing_key = optional_key(bucketing_key)
        evaluate, record = self.snapshot.evaluate, self.record
        answers: dict[str, str] = {}
        for flag in dict.fromkeys(names) if names else self.snapshot.flag_names():
            decision: Decision = evaluate(key, flag, bucketing_key, values)
            answers[flag] = decision[0]
            if record is not None and decision is not NOT_FOUND:
                record((key, bucketing_key, flag, decision))
        return answers


Decide = Callable[[str, str, "str | None", "Mapping[str, Any] | None"], Decision]


def make_decide(
    snapshot: Snapshot, limits: Limits, record: Callable[[Answer], None] | None
) -> Decide:
    """`decide(key, flag, bucketing_key, attributes) -> Decision` for one snapshot: the
    engine's decision, recorded for impressions; raises CallFailed where the sidecar would
    refuse the lookup and TypeError where the RPC clients would.

    This is the whole cost of an in-process lookup besides the engine, so its common case
    (plain key, plain attribute values within the limits, a known flag) is C
    (`fader._decide`: a quarter of what the Python rules cost, benchmarks/RESULTS.md); every
    other lookup goes to the Python rules (`rules_decide`), which say what is wrong.
    """
    long_names = long_flag_names(snapshot)
    rules = rules_decide(snapshot, limits, record, long_names)
    if long_names:  # every lookup's flag name is checked: the rules take every lookup
        return rules
    return _decide.Decide(
        snapshot.evaluate,
        record,
        rules,
        NOT_FOUND,
        limits.max_attribute_size,
        limits.max_attributes,
    )


def long_flag_names(snapshot: Snapshot) -> bool:
    """Whether a flag of `snapshot` has a name the sidecar would refuse to look up: almost
    never, and then every lookup's name must be checked."""
    return any(len(name) > MAX_NAME_LENGTH for name in snapshot.flags)


def rules_decide(
    snapshot: Snapshot,
    limits: Limits,
    record: Callable[[Answer], None] | None,
    long_names: bool,
) -> Decide:
    """`make_decide`'s decide, all in Python: the sidecar's rules as they are written. A
    closure rather than a method, and the plain-attribute check inlined: it answers every
    lookup the C path hands over (and tests compare the two). `long_names`:
    `long_flag_names(snapshot)`."""
    evaluate = snapshot.evaluate
    max_size, max_attributes = limits.max_attribute_size, limits.max_attributes

    def decide(
        key: str, flag: str, bucketing_key: str | None, attributes: Mapping[str, Any] | None
    ) -> Decision:
        if attributes:
            for value in attributes.values():
                kind = type(value)
                if kind is str:
                    if len(value) > max_size:
                        attributes = engine_attributes(attributes, limits)
                        break
                elif (
                    kind is not bool
                    and kind is not float
                    and (kind is not int or not INT64_MIN <= value <= INT64_MAX)
                ):
                    attributes = engine_attributes(attributes, limits)
                    break
            else:
                if len(attributes) > max_attributes or "" in attributes:
                    attributes = engine_attributes(attributes, limits)
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isascii():
            check_key(key)
        if bucketing_key is not None and (
            not 0 < len(bucketing_key) <= MAX_KEY_LENGTH or not bucketing_key.isascii()
        ):
            bucketing_key = optional_key(bucketing_key)
        decision: Decision = evaluate(key, flag, bucketing_key, attributes)
        if decision is NOT_FOUND or long_names:
            check_name(flag, "flag")
            if decision is NOT_FOUND:
                return decision
        if record is not None:
            record((key, bucketing_key, flag, decision))
        return decision

    return decide


def check_key(key: str) -> None:
    """The sidecar's length rule; and a key protobuf cannot carry (a lone surrogate) raises
    UnicodeEncodeError, as the RPC clients raise setting it, rather than reach the
    exposures upload."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise invalid(f"key: {len(key)} characters, 1 to {MAX_KEY_LENGTH} allowed")
    if not key.isascii():
        key.encode()


def optional_key(key: str | None) -> str | None:
    """Empty means none, as on the wire; too long is refused like a key."""
    if not key:
        return None
    if len(key) > MAX_KEY_LENGTH:
        raise invalid(f"bucketing_key: {len(key)} characters, at most {MAX_KEY_LENGTH} allowed")
    if not key.isascii():
        key.encode()
    return key


def engine_attributes(attributes: Mapping[str, Any], limits: Limits) -> dict[str, object]:
    """Every value converted first (TypeError, as the RPC clients raise before sending),
    then the sidecar's limits (CallFailed INVALID_ARGUMENT)."""
    converted = {name: engine_value(name, value) for name, value in attributes.items()}
    if len(converted) > limits.max_attributes:
        raise invalid(
            f"attributes: {len(converted)} entries, at most {limits.max_attributes} allowed"
        )
    max_size = limits.max_attribute_size
    for name, value in converted.items():
        if not name:
            raise invalid("attributes: an attribute name is empty")
        size = len(value) if isinstance(value, str) else _list_size(value)
        if size > max_size:
            raise invalid(f"attributes[{name!r}]: {size} characters, at most {max_size} allowed")
    return converted


def _list_size(value: object) -> int:
    return sum(map(len, value)) if isinstance(value, list) else 0


def engine_value(name: str, value: object) -> object:
    """One attribute as the sidecar's engine sees it after the wire: the RPC clients'
    conversion (`fader._common.attribute_value`) and the sidecar's decoding, in one step."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise TypeError(f"attribute {name!r}: {value} does not fit in 64 bits")
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, datetime.datetime):
        # what protobuf's Timestamp.FromDatetime keeps, and the sidecar reads: whole seconds
        return calendar.timegm(value.astimezone(datetime.UTC).utctimetuple())
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise TypeError(
        f"attribute {name!r}: {type(value).__name__} is not supported "
        "(use bool, int, float, str, a list of str or a datetime)"
    )


def check_name(name: str, where: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH:
        raise invalid(f"{where}: {len(name)} characters, 1 to {MAX_NAME_LENGTH} allowed")
