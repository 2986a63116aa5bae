"""Translation between fader.v1 messages and the engine's plain Python arguments.

Validation lives here too, because "malformed" is a property of the wire form: every error
names the request field it is about, so that an INVALID_ARGUMENT is actionable.
"""

from __future__ import annotations

from collections.abc import Mapping

from fader.pb.fader.v1 import evaluation_pb2 as pb
from fader.rules.result import Result

from sidecar import limits

# Split's SDKs refuse keys longer than this; so do we, instead of answering differently.
MAX_KEY_LENGTH = 250
MAX_NAME_LENGTH = 1024


class BadRequest(ValueError):
    """A request the sidecar refuses with INVALID_ARGUMENT; the message names the field."""


def check_key(key: str, where: str) -> None:
    if not key:
        raise BadRequest(f"{where}: must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"{where}: {len(key)} characters, at most {MAX_KEY_LENGTH} allowed")


def optional_key(key: str, where: str) -> str | None:
    """An optional key field (empty on the wire means absent); same length rule as a key."""
    if not key:
        return None
    check_key(key, where)
    return key


def check_name(name: str, where: str) -> None:
    if not name:
        raise BadRequest(f"{where}: must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise BadRequest(f"{where}: {len(name)} characters, at most {MAX_NAME_LENGTH} allowed")


def attributes(
    values: Mapping[str, pb.AttributeValue],
    limit: int,
    where: str,
    max_size: int = limits.DEFAULT_MAX_ATTRIBUTE_SIZE,
) -> dict[str, object] | None:
    """Engine attributes from the typed wire map (None when there are none).

    int64 stays int and double stays float: Split's numeric matchers accept only ints, so
    collapsing both into one number type would change answers. A timestamp becomes whole
    seconds since the epoch, the unit of Split's DATETIME matchers. More than ``limit``
    entries, or a string (or string list) longer than ``max_size`` characters in all, is
    refused and counted in fader_limit_refusals_total: matching cost grows with both.
    """
    if not values:
        return None
    if len(values) > limit:
        limits.REFUSALS.count(limits.ATTRIBUTES)
        raise BadRequest(f"{where}: {len(values)} entries, at most {limit} allowed")
    converted: dict[str, object] = {}
    for name, value in values.items():
        kind = value.WhichOneof("kind")
        if kind in SCALAR_KINDS and name:
            item = getattr(value, kind)
            if kind == "string_value" and len(item) > max_size:
                raise _too_long(where, name, len(item), max_size)
            converted[name] = item
        else:
            converted[name] = _special(name, value, kind, where, max_size)
    return converted


SCALAR_KINDS = frozenset(("string_value", "int_value", "double_value", "bool_value"))


def _special(
    name: str, value: pb.AttributeValue, kind: str | None, where: str, max_size: int
) -> object:
    """The uncommon attribute forms, and the errors, out of the common path."""
    if kind is None:
        raise BadRequest(f"{where}[{name!r}]: no value set")
    if not name:
        raise BadRequest(f"{where}: an attribute name is empty")
    if kind == "string_list_value":
        items = list(value.string_list_value.values)
        size = sum(map(len, items))
        if size > max_size:
            raise _too_long(where, name, size, max_size)
        return items
    return value.timestamp_value.seconds


def _too_long(where: str, name: str, size: int, max_size: int) -> BadRequest:
    limits.REFUSALS.count(limits.ATTRIBUTE_SIZE)
    return BadRequest(f"{where}[{name!r}]: {size} characters, at most {max_size} allowed")


def fill_evaluation(message: pb.Evaluation, flag: str, result: Result) -> None:
    """Writes `result` into a message already in its response: setting fields in place costs
    half of building an Evaluation and copying it in, and absent fields stay unset."""
    message.flag = flag
    message.treatment = result.treatment
    if result.label is not None:
        message.label = result.label
    if result.config is not None:
        message.config = result.config
    if result.change_number is not None:
        message.change_number = result.change_number
