"""Structure-aware hostile documents: what a careless or malicious author could write.

Each generator starts from a real snapshot (the demo) and breaks it in one way a decoder or
validator must survive: nesting far too deep, numbers too large or not numbers at all
(NaN, Infinity), a wrong type at every path, unknown and duplicate keys, invalid UTF-8 and
truncation, in JSON and msgpack. Deterministic: the same inputs on every run.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

DEMO = Path(__file__).resolve().parents[2] / "sidecar" / "demo" / "demo.json"
WRONG_TYPES: tuple[Any, ...] = (None, True, -1, 2**70, 1.5, "", "x" * 300, [], {}, [None], {"": 1})


def demo() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DEMO.read_text())
    return document


def paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*path, index))


def set_at(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return document


def _deep(levels: int, fmt: str) -> bytes:
    if fmt == "json":
        return b'{"version":1,"flags":[' + b'{"a":[' * levels + b"]}" * levels + b"]}"
    head = msgpack.packb({"version": 1, "flags": None})[:-1]
    return bytes(head + b"\x91" * levels + b"\x90")


def hostile_inputs(seed: int = 19) -> Iterator[tuple[str, bytes, str]]:
    """(name, bytes, "json" | "msgpack") for every hostile input."""
    rng = random.Random(seed)
    base = demo()
    text = json.dumps(base).encode()
    for levels in (99, 101, 1100, 100_000):
        for fmt in ("json", "msgpack"):
            yield f"deep-{levels}", _deep(levels, fmt), fmt
    for number in ("1e999", "-1e999", "NaN", "Infinity", "1" + "0" * 5000, "-0", "1.0"):
        yield (
            f"version-{number[:8]}",
            text.replace(b'"version": 1', f'"version": {number}'.encode()),
            "json",
        )
    every_path = list(paths(base))
    for index, path in enumerate(every_path):  # a wrong type at every path
        value = WRONG_TYPES[index % len(WRONG_TYPES)]
        document = set_at(copy.deepcopy(base), path, value)
        fmt = "msgpack" if index % 3 == 0 and not isinstance(value, int) else "json"
        data = msgpack.packb(document) if fmt == "msgpack" else json.dumps(document).encode()
        yield f"type-{index}", data, fmt
    for index in range(40):  # unknown keys, anywhere a mapping is
        document = copy.deepcopy(base)
        mappings = [p for p in every_path if isinstance(_get(document, p), dict)]
        target = _get(document, rng.choice(mappings))
        target[rng.choice(("defaultTreatmen", "atributes", "", "\u0000", "version"))] = 1
        yield f"unknown-{index}", json.dumps(document).encode(), "json"
    for key in ("version", "flags", "name", "defaultTreatment", "partitions"):  # duplicates
        marker = f'"{key}": '.encode()
        at = text.find(marker)
        if at >= 0:
            yield f"duplicate-{key}", text[:at] + marker + b'"dup", ' + text[at:], "json"
    for half in ("ud800", "udfff"):  # a lone UTF-16 surrogate, escaped: valid JSON, not text
        yield f"surrogate-{half}", text.replace(b'"off"', b'"o\\' + half.encode() + b'"'), "json"
    flagd = {"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}
    flagd["flags"]["f"]["targeting"] = {"if": [{"==": [{"var": "x"}, "\ud800"]}, "a", None]}
    yield "surrogate-flagd", json.dumps(flagd).encode(), "json"
    for index in range(30):  # invalid UTF-8 inside and around strings
        at = rng.randrange(len(text))
        yield (
            f"utf8-{index}",
            text[:at] + rng.choice((b"\x84", b"\xff\xfe", b"\xc3")) + text[at:],
            "json",
        )
    packed = msgpack.packb(base)
    for index in range(40):  # truncation
        cut = rng.randrange(len(text))
        yield f"truncated-{index}", text[:cut], "json"
        yield f"truncated-mp-{index}", packed[: cut % len(packed)], "msgpack"
    for index in range(20):  # random bytes flipped
        data = bytearray(packed)
        for _ in range(3):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield f"flipped-{index}", bytes(data), "msgpack"


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        document = document[step]
    return document
