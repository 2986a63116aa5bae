"""The nesting-depth measure that guards every recursive decoder and walk."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from fader.snapshot.codec import decode
from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds, value_depth_exceeds
from fader.snapshot.limits import DEPTH, SNAPSHOT_LIMITS, LimitError


def nested(levels: int) -> Any:
    value: Any = 1
    for level in range(levels):
        value = [value, "x"] if level % 2 else {"a": value, "b": "]]]"}
    return value


def nested_text(levels: int) -> bytes:
    """The JSON text of ``nested(levels)``, built without json.dumps (which recurses)."""
    text = "1"
    for level in range(levels):
        text = f'[{text}, "x"]' if level % 2 else f'{{"a": {text}, "b": "]]]"}}'
    return text.encode()


@pytest.mark.parametrize("levels", [0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1100])
def test_measures_match_the_real_depth(levels: int) -> None:
    value = nested(levels)
    if levels < 500:
        assert json.loads(nested_text(levels)) == value
    assert json_depth_exceeds(nested_text(levels)) is (levels > MAX_DEPTH)
    assert value_depth_exceeds(value) is (levels > MAX_DEPTH)


def test_brackets_inside_strings_and_escapes_do_not_count() -> None:
    text = json.dumps({"a": "[" * 500, "b": '\\"[[[' * 100, "c": "\\" * 7 + '"{{{{'})
    assert not json_depth_exceeds(text.encode())
    assert json.loads(text)["a"] == "[" * 500


def test_unbalanced_text_counts_every_opener_the_parser_would_enter() -> None:
    assert json_depth_exceeds(b"[" * 1100)
    assert json_depth_exceeds(b"[" * 1100 + b"}" + b"]" * 1100)
    assert not json_depth_exceeds(b'{"a": [1, 2]]}')


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_decode_refuses_a_deep_document_as_a_counted_limit(fmt: str) -> None:
    value = {"version": 1, "flags": nested(400)}  # msgpack.packb stops at 512 levels
    data = json.dumps(value).encode() if fmt == "json" else msgpack.packb(value)
    with pytest.raises(LimitError) as caught:
        decode(data, fmt)
    assert caught.value.reason == DEPTH and DEPTH in SNAPSHOT_LIMITS
    assert f"more than {MAX_DEPTH} levels deep" in str(caught.value)


def test_msgpack_deeper_than_its_own_stack_names_the_limit() -> None:
    with pytest.raises(LimitError, match="nesting limit"):
        decode(b"\x91" * 5000 + b"\x90", "msgpack")


def test_decode_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"invalid msgpack: \w+"):
        decode(b"\xc1", "msgpack")
    with pytest.raises(ValueError, match=r"not UTF-8 text \(byte 0x84\)"):
        decode(b"\xa1\x84", "msgpack")
