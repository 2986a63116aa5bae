"""The deterministic CBOR of ``fractional`` v3's bucketing values: a string's encoding (the
fast path: a precomputed header, then the UTF-8) is the bytes cbor2's canonical encoder
writes, at every header size."""

from __future__ import annotations

import cbor2
import pytest
from fader.flagd import cbor


@pytest.mark.parametrize("length", [0, 1, 23, 24, 25, 255, 256, 65535, 65536, 70000])
@pytest.mark.parametrize("unit", ["a", "ü", "€", "😀"])
def test_a_string_encodes_as_canonical_cbor(length: int, unit: str) -> None:
    text = unit * length
    assert cbor.text(text) == cbor.encode(text) == cbor2.dumps(text, canonical=True)
    assert cbor.encode([text, 1]) == cbor2.dumps([text, 1], canonical=True)


def test_a_lone_surrogate_keeps_its_three_bytes() -> None:
    assert cbor.text("a\ud800") == b"\x64a\xed\xa0\x80"
    assert cbor.utf8("a\ud800") == b"a\xed\xa0\x80"
