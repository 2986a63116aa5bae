"""Decode snapshot bytes and recognise the four accepted document shapes.

Accepted as-is (README "Snapshots"): Fader's native ``{"version", "flags", "segments",
"ruleBasedSegments", "flagd"}`` (``flagd``, optional, holds a flagd flags document);
Split ``splitChanges`` spec 1.3 ``{"ff": {"d", "t"}, "rbs": ...}``; spec 1.1
``{"splits", "since", "till"}``; and a plain flagd flags file ``{"flags": {key: flag},
"$evaluators", "metadata"}`` (``flags`` an object, no ``version``). JSON or msgpack, same
structure.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack

from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds, value_depth_exceeds
from fader.snapshot.issues import Issue, SnapshotError
from fader.snapshot.limits import DEPTH, LimitError
from fader.snapshot.text import lone_surrogate
from fader.snapshot.validate import is_int

JSON = "json"
MSGPACK = "msgpack"
_NAMES = {JSON: "JSON", MSGPACK: "msgpack"}


@dataclass(frozen=True, slots=True)
class Document:
    """A snapshot document in native form, with where each part came from for error paths."""

    version: int
    flags: list[Any]
    segments: Any
    rule_based_segments: list[Any]
    kind: str
    flags_path: str
    rbs_path: str
    segments_path: str
    # flagd-dialect flags: a flagd flags document (fader.flagd.document), or None
    flagd: Any = None
    flagd_path: str = "$.flagd"
    # False for a plain flagd file, which has no version: the store numbers it when applied
    versioned: bool = True


@dataclass(frozen=True, slots=True)
class RawDocument:
    """The encoded document a snapshot was built from.

    Compiled rules cannot be turned back into JSON, and compiling drops each flag's JSON to
    keep a large load's peak memory down; lanes that re-serve the definitions themselves
    (the Split SDK API) decode these bytes again, off the lookup path. One bytes object
    costs the file's size and nothing to the garbage collector.
    """

    data: bytes
    fmt: str

    def decode(self) -> Document:
        return normalize(decode(self.data, self.fmt))


def format_for(path: str | Path) -> str:
    """The encoding implied by a file name (.msgpack/.mpk or JSON)."""
    suffix = Path(path).suffix.lower()
    return MSGPACK if suffix in (".msgpack", ".mpk") else JSON


def _yield_point(value: Any) -> Any:
    """Called by the decoders for every object (and msgpack array) they build.

    Decoding a large snapshot is one long C call that holds the GIL; lookups served by
    other threads would stall for its whole length. A Python-level hook gives the
    interpreter a point to hand the GIL over at every JSON object / msgpack container, so
    a lookup waits at most one switch interval instead of the whole decode.
    """
    return value


def decode(data: bytes | memoryview, fmt: str, *, depth: int | None = MAX_DEPTH) -> Any:
    """Bytes -> Python objects; a syntax error is a SnapshotError with its position.

    A document nesting deeper than ``depth.MAX_DEPTH`` is refused (LimitError ``too_deep``)
    before the recursive JSON parser, or anything after msgpack's decoder, walks it
    (``depth`` None: msgpack the caller measures, ``decode_flags``).
    """
    if fmt != MSGPACK and json_depth_exceeds(bytes(data)):
        raise _too_deep()
    try:
        if fmt == MSGPACK:
            document = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                object_hook=_yield_point,
                list_hook=_yield_point,
            )
            if depth is not None and value_depth_exceeds(document, depth):
                raise _too_deep()
            return document
        text = bytes(data)
        document = json.loads(text, object_hook=_yield_point)
        not_text = lone_surrogate(text, document)
        if not_text is not None:
            raise _fail("$", f"invalid JSON: {not_text}")
        return document
    except json.JSONDecodeError as exc:
        raise SnapshotError(
            [Issue(None, "$", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
        ) from None
    except msgpack.StackError:
        raise _too_deep() from None
    except UnicodeDecodeError as exc:
        message = f"a string is not UTF-8 text (byte 0x{exc.object[exc.start]:02x})"
        raise _fail("$", f"invalid {_NAMES.get(fmt, fmt)}: {message}") from None
    except (ValueError, msgpack.UnpackException) as exc:
        if isinstance(exc, SnapshotError):
            raise
        detail = str(exc) or type(exc).__name__
        raise _fail("$", f"invalid {_NAMES.get(fmt, fmt)}: {detail}") from None


# msgpack's first byte of an array: fixarray, array 16, array 32
_ARRAY_HEADS: Final = frozenset({*range(0x90, 0xA0), 0xDC, 0xDD})
# A flag in a native document is at depth 2: the document's map, then its "flags" array.
FLAG_DEPTH: Final = MAX_DEPTH - 2


def split_flags(data: bytes) -> tuple[Any, list[memoryview] | None] | None:
    """A msgpack document decoded but for its ``flags`` array, whose items are left
    encoded, each one a view into ``data`` (for ``decode_flags``).

    A loader can then decode, check and compile one flag at a time: a large snapshot's
    whole decoded JSON is several times its encoded size, and never needs to be held at
    once. The list is None when the document has no ``flags`` array (it is then decoded
    whole). None for anything else than a map of string keys, each once, and nothing
    after it: ``decode`` decodes it whole and says what is wrong.
    """
    unpacker = msgpack.Unpacker(
        io.BytesIO(data),
        raw=False,
        strict_map_key=True,
        object_hook=_yield_point,
        list_hook=_yield_point,
        max_buffer_size=max(len(data), 1),
    )
    view = memoryview(data)
    document: dict[str, Any] = {}
    flags: list[memoryview] | None = None
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if not isinstance(key, str) or key in document:
                return None
            if key == "flags" and data[unpacker.tell()] in _ARRAY_HEADS:
                flags = []
                for _ in range(unpacker.read_array_header()):
                    start = unpacker.tell()
                    unpacker.skip()
                    flags.append(view[start : unpacker.tell()])
                document[key] = []
            else:
                document[key] = unpacker.unpack()
    except (ValueError, IndexError, msgpack.UnpackException):
        return None
    if unpacker.tell() != len(data) or value_depth_exceeds(document):
        return None
    return document, flags


def decode_flags(items: list[memoryview]) -> list[Any]:
    """Flags ``split_flags`` left encoded, decoded and measured together: the depth check
    costs per call more than per flag, so a loader decodes them a batch at a time."""
    flags = [decode(item, MSGPACK, depth=None) for item in items]
    if value_depth_exceeds(flags, FLAG_DEPTH + 1):  # + 1: the list holding them
        raise _too_deep()
    return flags


def _too_deep() -> LimitError:
    return LimitError(
        DEPTH, f"document nests more than {MAX_DEPTH} levels deep (the nesting limit)"
    )


def _fail(path: str, message: str) -> SnapshotError:
    return SnapshotError([Issue(None, path, message)])


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, "must be a list")
    return value


def normalize(doc: Any) -> Document:
    """Recognise the document shape and return it in native form."""
    if not isinstance(doc, Mapping):
        raise _fail("$", "a snapshot must be an object")
    if isinstance(doc.get("flags"), Mapping) and "version" not in doc:
        return _flagd(doc)
    if "flags" in doc or "version" in doc:
        return _native(doc)
    if "ff" in doc:
        return _split_13(doc)
    if "splits" in doc:
        return _split_11(doc)
    raise _fail(
        "$",
        "not a snapshot: expected 'version' and 'flags', Split's 'ff' or 'splits', or a flagd "
        "flags file ('flags' as an object)",
    )


def _version(value: Any, path: str) -> int:
    if value is None:
        raise _fail(path, "missing: a snapshot's version is a non-negative integer")
    if not is_int(value) or value < 0:
        raise _fail(path, f"version must be a non-negative integer, got {value!r}")
    return int(value)


def _native(doc: Mapping[str, Any]) -> Document:
    if "version" not in doc and isinstance(doc.get("flags"), list):
        raise _fail(
            "$.version",
            "missing: a Fader snapshot has 'version' and 'flags' as a list (a flagd flags "
            "file has 'flags' as an object keyed by flag name)",
        )
    segments = doc.get("segments")
    return Document(
        version=_version(doc.get("version"), "$.version"),
        flags=_list(doc.get("flags"), "$.flags"),
        segments={} if segments is None else segments,
        rule_based_segments=_list(doc.get("ruleBasedSegments"), "$.ruleBasedSegments"),
        kind="fader",
        flags_path="$.flags",
        rbs_path="$.ruleBasedSegments",
        segments_path="$.segments",
        flagd=doc.get("flagd"),
    )


def _flagd(doc: Mapping[str, Any]) -> Document:
    """A plain flagd flags file, as flagd reads it: the whole document is the flagd part."""
    return Document(
        version=0,
        flags=[],
        segments={},
        rule_based_segments=[],
        kind="flagd",
        flags_path="$.flags",
        rbs_path="$.ruleBasedSegments",
        segments_path="$.segments",
        flagd=doc,
        flagd_path="$",
        versioned=False,
    )


def _split_13(doc: Mapping[str, Any]) -> Document:
    ff = doc.get("ff")
    rbs = doc.get("rbs") or {}
    if not isinstance(ff, Mapping) or not isinstance(rbs, Mapping):
        raise _fail("$", "'ff' and 'rbs' must be objects")
    till = ff.get("t")
    rbs_till = rbs.get("t")
    version = _version(till, "$.ff.t")
    if is_int(rbs_till) and rbs_till > version:
        version = rbs_till
    return Document(
        version=version,
        flags=_list(ff.get("d"), "$.ff.d"),
        segments={},
        rule_based_segments=_list(rbs.get("d"), "$.rbs.d"),
        kind="splitChanges 1.3",
        flags_path="$.ff.d",
        rbs_path="$.rbs.d",
        segments_path="$.segments",
    )


def _split_11(doc: Mapping[str, Any]) -> Document:
    return Document(
        version=_version(doc.get("till"), "$.till"),
        flags=_list(doc.get("splits"), "$.splits"),
        segments={},
        rule_based_segments=[],
        kind="splitChanges 1.1",
        flags_path="$.splits",
        rbs_path="$.rbs",
        segments_path="$.segments",
    )
