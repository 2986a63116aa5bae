"""Deterministic CBOR (RFC 8949 section 4.2) of JSON values: the input of ``fractional`` v3.

flagd's v3 ``fractional`` hashes the CBOR encoding of the bucketing value instead of its
text, so that ``1``, ``"1"`` and ``true`` bucket differently and every provider, in any
language, hashes the same bytes. Deterministic means: integers and lengths in their
shortest form, floats in the shortest of half, single or double precision that keeps the
value exactly, map keys sorted by their encoded bytes. Integral floats are first turned
into integers (so ``1.0`` and ``1`` hash alike, as JSON cannot tell them apart), within the
64-bit range.
"""

from __future__ import annotations

import math
import struct
from typing import Any

UNSIGNED, NEGATIVE, TEXT, ARRAY, MAP = 0, 1, 3, 4, 5
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


class NotEncodable(ValueError):
    """A value CBOR cannot carry for bucketing (an integer beyond 64 bits, a NaN...)."""


def encode(value: Any) -> bytes:
    if type(value) is str:
        return text(value)
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _head(major: int, argument: int, out: bytearray) -> None:
    if argument < 24:
        out.append(major << 5 | argument)
    elif argument < 0x100:
        out += bytes((major << 5 | 24, argument))
    elif argument < 0x10000:
        out.append(major << 5 | 25)
        out += argument.to_bytes(2, "big")
    elif argument < 0x100000000:
        out.append(major << 5 | 26)
        out += argument.to_bytes(4, "big")
    else:
        out.append(major << 5 | 27)
        out += argument.to_bytes(8, "big")


def utf8(value: str) -> bytes:
    """UTF-8 bytes; a lone surrogate (JSON's ``"\\ud800"`` decodes to one) is kept as its
    three bytes rather than refused, so every string has a bucket."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def _text_head(length: int) -> bytes:
    out = bytearray()
    _head(TEXT, length, out)
    return bytes(out)


# The header of every text shorter than 256 bytes, made once: a bucketing value is nearly
# always one of those, and ``fractional`` v3 encodes one per request.
_TEXT_HEADS: tuple[bytes, ...] = tuple(_text_head(length) for length in range(256))


def text(value: str) -> bytes:
    """The encoding of a string: its header, then its UTF-8 bytes."""
    data = utf8(value)
    length = len(data)
    return (_TEXT_HEADS[length] if length < 256 else _text_head(length)) + data


def _encode(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, float) and value.is_integer() and _INT_MIN <= value <= _UINT_MAX:
        _integer(int(value), out)
    elif isinstance(value, int):
        _integer(value, out)
    elif isinstance(value, float):
        _float(value, out)
    elif isinstance(value, str):
        out += text(value)
    elif isinstance(value, list | tuple):
        _head(ARRAY, len(value), out)
        for item in value:
            _encode(item, out)
    elif isinstance(value, dict):
        entries = sorted((encode(key), item) for key, item in value.items())
        _head(MAP, len(entries), out)
        for key, item in entries:
            out += key
            _encode(item, out)
    else:
        raise NotEncodable(f"{type(value).__name__} is not a JSON value")


def _integer(value: int, out: bytearray) -> None:
    if 0 <= value <= _UINT_MAX:
        _head(UNSIGNED, value, out)
    elif _INT_MIN <= value < 0:
        _head(NEGATIVE, -1 - value, out)
    else:
        raise NotEncodable(f"{value} does not fit in 64 bits")


def _float(value: float, out: bytearray) -> None:
    if math.isnan(value):
        raise NotEncodable("NaN is not a JSON number")
    for fmt, initial in (("e", 0xF9), ("f", 0xFA)):
        try:
            packed = struct.pack(">" + fmt, value)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, packed)[0] == value:
            out.append(initial)
            out += packed
            return
    out.append(0xFB)
    out += struct.pack(">d", value)
