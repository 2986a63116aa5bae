"""Bucketing: which of the 100 buckets a key falls in, for a seed.

Two algorithms exist in Split's data: ``algo: 2`` is murmur3 x86_32 over the UTF-8
bytes taken *unsigned* (the signed variant is the obsolete "v1" and disagrees on
about half of all keys); ``algo: 1`` or a missing ``algo`` is the legacy
Java-``hashCode``-style hash, as the Python SDK does.
"""

from __future__ import annotations

from typing import Final

import mmh3

MURMUR: Final = 2  # any other algo value means the legacy hash

_UINT32: Final = 0xFFFFFFFF
_INT32_SIGN: Final = 0x80000000

# Unsigned murmur3 x86_32 of bytes, the raw C function, for hot paths that inline
# ``murmur32(key.encode(), seed_u32) % 100``. Never `mmh3.hash` on a str: given a str with a
# lone surrogate (JSON can escape one, "\ud800", and a caller's str may hold one) it crashes
# the process (mmh3 5.x); `str.encode` raises instead, and evaluation answers "exception".
murmur32: Final = mmh3.mmh3_32_uintdigest


def murmur_hash(key: str, seed: int) -> int:
    """Unsigned murmur3 x86_32 of the UTF-8 key; the seed is taken modulo 2**32.

    mmh3 >= 5 refuses negative seeds, and flag seeds are signed int32, hence the mask.
    """
    return int(murmur32(key.encode(), seed & _UINT32))


def murmur_bucket(key: str, seed: int) -> int:
    """Bucket 1..100 for ``algo: 2``."""
    return int(murmur32(key.encode(), seed & _UINT32)) % 100 + 1


def _to_int32(value: int) -> int:
    value &= _UINT32
    return value - 0x100000000 if value & _INT32_SIGN else value


def legacy_hash(key: str, seed: int) -> int:
    """Java ``31*h + c`` over UTF-16 code units, XOR seed, as a signed int32.

    UTF-16 code units (not code points) is what Java, JavaScript and every legacy
    vector file use; the Python SDK iterates code points and so differs only for
    characters outside the Basic Multilingual Plane (documented in the README).
    """
    h = 0
    if key.isascii():
        units: bytes | memoryview = key.encode("ascii")
    else:
        units = memoryview(key.encode("utf-16-le")).cast("H")
    for unit in units:
        h = (31 * h + unit) & _UINT32
    return _to_int32(h ^ (seed & _UINT32))


def legacy_bucket(key: str, seed: int) -> int:
    """Bucket 1..100 for ``algo: 1`` (or no ``algo``)."""
    return abs(legacy_hash(key, seed)) % 100 + 1


def legacy_index(key: str, seed: int) -> int:
    """``legacy_bucket - 1``: the index into a condition's 100-entry table."""
    return abs(legacy_hash(key, seed)) % 100


def is_murmur(algo: object) -> bool:
    """Only ``algo: 2`` is murmur; anything else is legacy, as in the Python SDK."""
    return algo == MURMUR and not isinstance(algo, bool)


def bucket(key: str, seed: int, algo: object = MURMUR) -> int:
    """Public bucketing entry point: the bucket (1..100) of ``key`` for ``seed`` under ``algo``."""
    return murmur_bucket(key, seed) if is_murmur(algo) else legacy_bucket(key, seed)
