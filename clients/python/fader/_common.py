"""What the sync and asyncio clients share: targets, attribute encoding, the control fallback."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Iterable, Mapping

import grpc

from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.result import Result

log = logging.getLogger("fader")

CONTROL = "control"
# A same-host sidecar answers in well under a millisecond; this bounds the worst case.
DEFAULT_TIMEOUT = 0.1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
LOG_EVERY_SECONDS = 10.0
FALLBACK_LABELS = {
    grpc.StatusCode.UNAVAILABLE: "sidecar unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "sidecar timeout",
}

Attributes = Mapping[str, object]


def channel_options(target: str) -> list[tuple[str, object]]:
    """Reconnect quickly after a sidecar restart (gRPC's default backoff grows to 2 minutes).

    On a Unix socket, send a plain authority: gRPC would send the %-encoded path, which
    servers and proxies not built on gRPC core reject (grpc/grpc#38142).
    """
    options: list[tuple[str, object]] = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if target.startswith("unix:"):
        options.append(("grpc.default_authority", "localhost"))
    return options


def attribute_map(attributes: Attributes | None) -> dict[str, pb.AttributeValue] | None:
    if not attributes:
        return None
    return {name: attribute_value(name, value) for name, value in attributes.items()}


def attribute_value(name: str, value: object) -> pb.AttributeValue:
    """Keeps Python's types apart on the wire: bool, int, float, str, list of str, datetime.

    Raises TypeError for anything else: the sidecar could not evaluate it the way the caller
    expects, and that is a bug to see at once rather than a silent "control".
    """
    if isinstance(value, bool):
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise TypeError(f"attribute {name!r}: {value} does not fit in 64 bits")
        return pb.AttributeValue(int_value=value)
    if isinstance(value, float):
        return pb.AttributeValue(double_value=value)
    if isinstance(value, str):
        return pb.AttributeValue(string_value=value)
    if isinstance(value, datetime.datetime):
        stamp = pb.AttributeValue()
        stamp.timestamp_value.FromDatetime(value.astimezone(datetime.UTC))
        return stamp
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return pb.AttributeValue(string_list_value=pb.StringList(values=list(value)))
    raise TypeError(
        f"attribute {name!r}: {type(value).__name__} is not supported "
        "(use bool, int, float, str, a list of str or a datetime)"
    )


def property_map(properties: Attributes | None) -> dict[str, pb.AttributeValue] | None:
    """Event properties: like attributes, None allowed and dropped (Split's SDKs do so too)."""
    if not properties:
        return None
    return {k: attribute_value(k, v) for k, v in properties.items() if v is not None}


# The gRPC methods of the treatment, treatments and track operations.
METHODS = ("GetTreatment", "GetTreatments", "Track")


def read_treatment(response: pb.GetTreatmentResponse) -> str:
    return str(response.evaluation.treatment)


def read_result(response: pb.GetTreatmentResponse) -> Result:
    return result(response.evaluation, response.version)


def read_treatments(response: pb.GetTreatmentsResponse) -> dict[str, str]:
    return {e.flag: e.treatment for e in response.evaluations}


def result(evaluation: pb.Evaluation, version: int) -> Result:
    return Result(
        evaluation.treatment,
        evaluation.config if evaluation.HasField("config") else None,
        evaluation.label if evaluation.HasField("label") else None,
        version,
    )


def treatment_request(
    key: str, flag: str, bucketing_key: str | None, attributes: Attributes | None
) -> pb.GetTreatmentRequest:
    return pb.GetTreatmentRequest(
        key=key, flag=flag, bucketing_key=bucketing_key or "", attributes=attribute_map(attributes)
    )


def treatments_request(
    key: str, names: list[str], bucketing_key: str | None, attributes: Attributes | None
) -> pb.GetTreatmentsRequest:
    return pb.GetTreatmentsRequest(
        key=key,
        flags=names,
        bucketing_key=bucketing_key or "",
        attributes=attribute_map(attributes),
    )


def track_request(
    key: str,
    traffic_type: str,
    event_type: str,
    value: float | None,
    properties: Attributes | None,
) -> pb.TrackRequest:
    return pb.TrackRequest(
        key=key,
        traffic_type=traffic_type,
        event_type=event_type,
        value=None if value is None else float(value),
        properties=property_map(properties),
    )


def flag_list(flags: Iterable[str]) -> list[str]:
    if isinstance(flags, str):
        raise TypeError("flags must be a list of flag names, not one string")
    return list(flags)


class CallFailed(Exception):
    """A call to the sidecar failed; `code` is the gRPC status it stands for, whatever the
    transport, so that the fallback treats gRPC and the fast lane alike."""

    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Fallbacks:
    """Counts lookups answered with "control" because the call failed, and logs them.

    Logs at most once per LOG_EVERY_SECONDS, with the number of failures since the last line,
    so an unreachable sidecar cannot flood the application's log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def record(self, method: str, failure: CallFailed) -> Result:
        """Counts and (at most every LOG_EVERY_SECONDS) logs `failure`; the control result."""
        code, details = failure.code, failure.details
        with self._lock:
            self.count += 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at < LOG_EVERY_SECONDS:
                return fallback_result(code)
            unlogged, self._unlogged, self._logged_at = self._unlogged, 0, now
        level = logging.WARNING if code in FALLBACK_LABELS else logging.ERROR
        log.log(
            level,
            "fader: %s failed (%s: %s); answering %r (%d such call(s) since the last message)",
            method,
            code.name if code else "?",
            details,
            CONTROL,
            unlogged,
        )
        return fallback_result(code)


def fallback_result(code: grpc.StatusCode | None) -> Result:
    label = FALLBACK_LABELS.get(code) if code else None
    return Result(
        CONTROL, None, label or f"sidecar error: {code.name if code else 'unknown'}", None
    )
