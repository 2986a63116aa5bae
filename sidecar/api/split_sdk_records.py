"""What Split's SDKs post, decoded into the telemetry pipeline's records.

Wire forms (Split's events and telemetry APIs):

- `testImpressions/bulk`: `[{"f": flag, "i": [{"k", "t", "m", "c", "r", "b", "pt",
  "properties"}]}]`, grouped by flag (k key, t treatment, m time ms, c change number,
  r label, b bucketing key, pt previous time);
- `testImpressions/count`: `{"pf": [{"f", "m": hour start ms, "rc": count}]}`;
- `keys/ss`: `{"keys": [{"f", "ks": [keys]}]}`; `keys/cs`: `{"keys": [{"k", "fs": [flags]}]}`;
- `events/bulk`: `[{"key", "trafficTypeName", "eventTypeId", "value", "timestamp",
  "properties"}]`, each checked as Track checks an event (`sidecar.core.events.make_event`).

Two kinds of refusal. A body that is not of its route's shape (not JSON, a dict where a list
belongs) is refused whole: `BadRequest`, answered 400 with the reason. A record of the right
shape that fails a check (an empty key, a time that is not milliseconds) is skipped and
counted, and the rest of the body is kept: an SDK retries a refused body unchanged, so
refusing the whole body for one record would cost every good record beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sidecar.core.attributes import AttributePolicy
from sidecar.core.events import MAX_TIMESTAMP_MS, make_event
from sidecar.core.refusals import BadRequest
from sidecar.core.requests import check_key, check_name
from sidecar.telemetry.batches import CountRow, EventRow, UniqueRow, event_row
from sidecar.telemetry.impressions import Impression

# Reasons kept per body, to answer with and to log; the rest are only counted.
MAX_REASONS = 5
INT64_MAX = 2**63 - 1

Item = TypeVar("Item")


@dataclass
class Records:
    """One body's records, and what was skipped with the first reasons why."""

    impressions: list[Impression] = field(default_factory=list)
    counts: list[CountRow] = field(default_factory=list)
    unique_keys: list[UniqueRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def kinds(self) -> dict[str, int]:
        return {
            "impressions": len(self.impressions),
            "counts": len(self.counts),
            "unique_keys": sum(len(keys) for _, keys in self.unique_keys),
            "events": len(self.events),
        }

    def made(self, make: Callable[..., Item], *args: Any) -> Item | None:
        """`make(*args)`, or None with the record counted as skipped when it raises
        BadRequest (whose message names the record's field)."""
        try:
            return make(*args)
        except BadRequest as err:
            self.skipped += 1
            if len(self.reasons) < MAX_REASONS:
                self.reasons.append(str(err))
            return None


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{where}: must be a JSON array, got {_kind(value)}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: must be a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: must be a string, got {_kind(value)}")
    return value


def _optional_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _int(value: Any, where: str, low: int, high: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where}: must be an integer from {low} to {high}, got {value!r}")
    return value


def _time_ms(value: Any, where: str) -> int:
    return _int(value, where, 1, MAX_TIMESTAMP_MS)


# -- impressions ---------------------------------------------------------------------------


def impressions_bulk(body: Any) -> Records:
    records = Records()
    for index, group in enumerate(_list(body, "$")):
        where = f"$[{index}]"
        group = _object(group, where)
        flag = _str(group.get("f"), f"{where}.f")
        for position, item in enumerate(_list(group.get("i"), f"{where}.i")):
            impression = records.made(_impression, flag, item, f"{where}.i[{position}]")
            if impression is not None:
                records.impressions.append(impression)
    return records


def _impression(flag: str, item: Any, where: str) -> Impression:
    item = _object(item, where)
    check_name(flag, f"{where}.f")
    key = _str(item.get("k"), f"{where}.k")
    check_key(key, f"{where}.k")
    bucketing_key = _optional_str(item.get("b"), f"{where}.b") or None
    if bucketing_key is not None:
        check_key(bucketing_key, f"{where}.b")
    treatment = _str(item.get("t"), f"{where}.t")
    check_name(treatment, f"{where}.t")
    previous = item.get("pt")
    change = item.get("c")
    return Impression(
        key=key,
        bucketing_key=bucketing_key,
        flag=flag,
        treatment=treatment,
        label=_optional_str(item.get("r"), f"{where}.r") or None,
        change_number=0 if change is None else _int(change, f"{where}.c", -1),
        time_ms=_time_ms(item.get("m"), f"{where}.m"),
        previous_time_ms=None if not previous else _time_ms(previous, f"{where}.pt"),
        snapshot_version=0,  # an SDK answered, not a snapshot of this sidecar
    )


def impression_counts(body: Any) -> Records:
    records = Records()
    rows = _list(_object(body, "$").get("pf"), "$.pf")
    for index, row in enumerate(rows):
        count = records.made(_count, row, f"$.pf[{index}]")
        if count is not None:
            records.counts.append(count)
    return records


def _count(row: Any, where: str) -> CountRow:
    row = _object(row, where)
    flag = _str(row.get("f"), f"{where}.f")
    check_name(flag, f"{where}.f")
    hour = _int(row.get("m"), f"{where}.m", 0, MAX_TIMESTAMP_MS)
    return (flag, hour, _int(row.get("rc"), f"{where}.rc", 1))


# -- unique keys ---------------------------------------------------------------------------


def unique_keys_server(body: Any) -> Records:
    """`keys/ss`: keys per flag."""
    records = Records()
    per_flag: dict[str, dict[str, None]] = {}
    for index, row in enumerate(_list(_object(body, "$").get("keys"), "$.keys")):
        where = f"$.keys[{index}]"
        row = _object(row, where)
        flag = _str(row.get("f"), f"{where}.f")
        for position, key in enumerate(_list(row.get("ks"), f"{where}.ks")):
            if records.made(_unique, flag, key, f"{where}.ks[{position}]", f"{where}.f"):
                per_flag.setdefault(flag, {})[key] = None
    records.unique_keys = [(flag, list(keys)) for flag, keys in per_flag.items()]
    return records


def unique_keys_client(body: Any) -> Records:
    """`keys/cs`: flags per key, turned around to keys per flag."""
    records = Records()
    per_flag: dict[str, dict[str, None]] = {}
    for index, row in enumerate(_list(_object(body, "$").get("keys"), "$.keys")):
        where = f"$.keys[{index}]"
        row = _object(row, where)
        key: Any = row.get("k")
        for position, flag in enumerate(_list(row.get("fs"), f"{where}.fs")):
            if records.made(_unique, flag, key, f"{where}.k", f"{where}.fs[{position}]"):
                per_flag.setdefault(flag, {})[key] = None
    records.unique_keys = [(flag, list(keys)) for flag, keys in per_flag.items()]
    return records


def _unique(flag: Any, key: Any, key_at: str, flag_at: str) -> bool:
    check_key(_str(key, key_at), key_at)
    check_name(_str(flag, flag_at), flag_at)
    return True


# -- events --------------------------------------------------------------------------------


def events_bulk(body: Any, policy: AttributePolicy) -> Records:
    records = Records()
    for index, item in enumerate(_list(body, "$")):
        event = records.made(_event, item, f"$[{index}]", policy)
        if event is not None:
            records.events.append(event)
    return records


def _event(item: Any, where: str, policy: AttributePolicy) -> EventRow:
    item = _object(item, where)
    properties = item.get("properties")
    if properties is not None:
        properties = _object(properties, f"{where}.properties")
        # Split's SDKs send null for a property value they could not use: kept as null
        nulls = {name: None for name, value in properties.items() if value is None}
        given = {name: value for name, value in properties.items() if value is not None}
        properties = (policy.admit(given, f"{where}.properties") or {}) | nulls
    timestamp = item.get("timestamp")
    event = make_event(
        _str(item.get("key"), f"{where}.key"),
        _str(item.get("trafficTypeName"), f"{where}.trafficTypeName"),
        _str(item.get("eventTypeId"), f"{where}.eventTypeId"),
        item.get("value"),
        properties or None,
        None if timestamp is None else _int(timestamp, f"{where}.timestamp", 0, MAX_TIMESTAMP_MS),
    )
    return event_row(event)
