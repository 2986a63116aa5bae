"""How deeply a document nests, measured without recursion, before anything decodes it.

Python's ``json`` module, ``msgpack.packb`` and every walk over a decoded document recurse
once per level: a 2 KB file nested 1,100 levels deep would end in ``RecursionError`` (a
traceback, a dead process, an UNKNOWN gRPC status). No real flag set nests anywhere near
``MAX_DEPTH``; a document that does is refused before any recursive code sees it.

JSON is measured on the raw bytes with C-speed string operations only (a Python loop over a
256 MB file would take seconds): strings are cut out, everything but brackets is dropped,
and innermost pairs are removed one level per pass. msgpack's own decoder is not recursive
(its C stack stops at 1,024 levels); its result is measured level by level with C iterators.
"""

from __future__ import annotations

import re
from functools import partial
from itertools import chain, compress
from operator import is_
from typing import Any, Final

# Deeper than any real snapshot (a flagd targeting rule rarely nests 15 levels), far below
# the interpreter's recursion limit of 1,000 frames, even counting a few frames per level.
MAX_DEPTH: Final = 100

_STRING = re.compile(rb'"[^"]*"')
_INNERMOST = re.compile(rb"\[\]|\{\}")
_KEEP = b'"[]{}'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_CONTAINERS: Final = frozenset({dict, list})


def json_depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if the JSON text ``data`` nests more than ``limit`` arrays/objects deep.

    Invalid text is measured as if valid; an unbalanced remainder counts every opener in
    it, so text the JSON parser would recurse into before failing is refused here too.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Escapes pair from the left: drop escaped backslashes, then escaped quotes; what is
    # left of each string is '"' ... '"' with no quote inside.
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Removing '""' first (C speed) leaves the regex only strings holding brackets; a
    # closing quote next to an opening one just merges two strings, which changes nothing.
    quoted = data.translate(None, _DROP).replace(b'""', b"")
    brackets = _STRING.sub(b"", quoted)
    brackets = brackets.replace(b'"', b"")  # an unterminated string's quote
    for _ in range(limit):
        if not brackets:
            return False
        reduced = _INNERMOST.sub(b"", brackets)
        if len(reduced) == len(brackets):
            # irreducible: unbalanced; its openers are the most the parser could nest
            return reduced.count(b"[") + reduced.count(b"{") > limit
        brackets = reduced
    return bool(brackets)


def value_depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if a decoded document nests more than ``limit`` lists/maps deep.

    Level by level, with no recursion and no Python-level step per element: C iterators
    pick each level's maps and lists and gather their children.
    """
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        types = list(map(type, level))
        dicts = compress(level, map(partial(is_, dict), types))
        lists = compress(level, map(partial(is_, list), types))
        children = list(
            chain(chain.from_iterable(map(dict.values, dicts)), chain.from_iterable(lists))
        )
        level = list(compress(children, map(_CONTAINERS.__contains__, map(type, children))))
    return False
