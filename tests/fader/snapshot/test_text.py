"""A lone UTF-16 surrogate escaped in JSON is found; text, pairs and look-alikes are not."""

from __future__ import annotations

import json

import pytest
from fader.snapshot.text import lone_surrogate


@pytest.mark.parametrize(
    "data",
    [b'{"k": "a\\ud800"}', b'["\\uDFFF"]', b'{"\\udc00": 1}', b'{"k": "\\ud83d x"}'],
)
def test_a_lone_half_anywhere_is_named(data: bytes) -> None:
    reason = lone_surrogate(data, json.loads(data))
    assert reason is not None and "lone UTF-16 surrogate" in reason


@pytest.mark.parametrize(
    "data",
    [b'{"k": "plain"}', b'{"k": "\\ud83d\\ude00"}', b'{"k": "\\\\ud800"}', b'{"k": "\\u00e9"}'],
)
def test_text_a_pair_and_an_escaped_backslash_pass(data: bytes) -> None:
    assert lone_surrogate(data, json.loads(data)) is None
