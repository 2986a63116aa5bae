"""The fast lane's wire format (docs/fastlane.md), shared by the sidecar and the Python clients.

A connection starts with the 5-byte preamble `FADR` + version; then each side sends frames:
a 4-byte big-endian length, then that many bytes holding one msgpack map. Kept free of I/O so
that the sync client, the asyncio client and the server parse frames the same way.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

from fader.result import Result

MAGIC = b"FADR"
VERSION = 1
PREAMBLE = MAGIC + bytes([VERSION])
LENGTH_BYTES = 4
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_IN_FLIGHT = 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Error codes of error frames. The first four answer one request and leave the connection
# open; the others end the connection.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
BAD_FRAME = "BAD_FRAME"
FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
SHUTTING_DOWN = "SHUTTING_DOWN"


class ProtocolError(Exception):
    """The peer broke the protocol; `code` is the error code to send before closing."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def packer() -> msgpack.Packer:
    """A Packer for `encode`. Reusing one per connection (or event loop) saves building one per
    frame, about a microsecond of a round trip; a Packer is not thread-safe."""
    return msgpack.Packer(use_bin_type=True, datetime=False)


def encode(message: Mapping[str, Any], with_packer: msgpack.Packer | None = None) -> bytes:
    body: bytes = (with_packer or packer()).pack(message)
    return len(body).to_bytes(LENGTH_BYTES, "big") + body


def decode(body: bytes) -> dict[str, Any]:
    """One frame body as a map; raises ProtocolError(BAD_FRAME) for anything else."""
    try:
        message = msgpack.unpackb(body, raw=False, timestamp=0)
    except Exception as err:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(BAD_FRAME, f"frame body is not valid msgpack: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_FRAME, f"frame body is a {type(message).__name__}, not a map")
    return message


class FrameBuffer:
    """Collects received bytes and cuts them into frame bodies, refusing oversized ones
    before their bytes arrive."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    @property
    def empty(self) -> bool:
        """No partial frame is waiting for more bytes."""
        return not self._buffer

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yields the complete frame bodies received so far; a bad length prefix raises
        ProtocolError after the frames before it, so those can still be answered."""
        buffer = self._buffer
        buffer += data
        start, end = 0, len(buffer)
        try:
            while end - start >= LENGTH_BYTES:
                size = int.from_bytes(buffer[start : start + LENGTH_BYTES], "big")
                if size > self._max:
                    raise ProtocolError(
                        FRAME_TOO_LARGE, f"frame of {size} bytes, at most {self._max} allowed"
                    )
                if size == 0:
                    raise ProtocolError(BAD_FRAME, "empty frame (length 0)")
                if end - start - LENGTH_BYTES < size:
                    break
                yield bytes(buffer[start + LENGTH_BYTES : start + LENGTH_BYTES + size])
                start += LENGTH_BYTES + size
        finally:
            del buffer[:start]


def attribute(name: str, value: object) -> object:
    """A client attribute as the fast lane carries it: msgpack keeps int and float apart; a
    datetime becomes a msgpack timestamp; a collection of strings becomes an array."""
    if isinstance(value, bool | float | str):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise TypeError(f"attribute {name!r}: {value} does not fit in 64 bits")
        return value
    if isinstance(value, datetime.datetime):
        return msgpack.Timestamp.from_datetime(value.astimezone(datetime.UTC))
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(
        f"attribute {name!r}: {type(value).__name__} is not supported "
        "(use bool, int, float, str, a list of str or a datetime)"
    )


def attributes(values: Mapping[str, object] | None) -> Mapping[str, object] | None:
    """The attributes as the fast lane carries them; a plain dict of plain values (the
    common case) is sent as it is."""
    if not values:
        return None
    if type(values) is dict:
        for value in values.values():
            kind = type(value)
            if kind is str or kind is float or kind is bool:
                continue
            if kind is not int or not INT64_MIN <= value <= INT64_MAX:
                break
        else:
            return values
    return {name: attribute(name, value) for name, value in values.items()}


def properties(values: Mapping[str, object] | None) -> dict[str, object] | None:
    """Event properties: like attributes, None values dropped (Split's SDKs do so too)."""
    if not values:
        return None
    return {name: attribute(name, value) for name, value in values.items() if value is not None}


def treatment_request(
    key: str, flag: str, bucketing_key: str | None, values: Mapping[str, object] | None
) -> dict[str, Any]:
    return {
        "op": "treatment",
        "key": key,
        "flag": flag,
        "bucketing_key": bucketing_key,
        "attributes": attributes(values),
    }


def treatments_request(
    key: str, names: list[str], bucketing_key: str | None, values: Mapping[str, object] | None
) -> dict[str, Any]:
    return {
        "op": "treatments",
        "key": key,
        "flags": names,
        "bucketing_key": bucketing_key,
        "attributes": attributes(values),
    }


def track_request(
    key: str,
    traffic_type: str,
    event_type: str,
    value: float | None,
    values: Mapping[str, object] | None,
) -> dict[str, Any]:
    return {
        "op": "track",
        "key": key,
        "traffic_type": traffic_type,
        "event_type": event_type,
        "value": value,
        "properties": properties(values),
    }


# The fast-lane ops of the treatment, treatments and track operations.
METHODS = ("treatment", "treatments", "track")


def read_treatments(response: Mapping[str, Any]) -> dict[str, str]:
    return {e["flag"]: e["treatment"] for e in response["evaluations"]}


def read_treatment(response: Mapping[str, Any]) -> str:
    treatment: str = response["treatment"]
    return treatment


def read_result(response: Mapping[str, Any]) -> Result:
    return Result(response["treatment"], response["config"], response["label"], response["version"])
