"""How a Fader answer reads in flagd's protocol: pure functions, no gRPC, no I/O.

flagd flags are typed (boolean, string, number, object variants); Split flags answer a
treatment name and an optional JSON config. The mapping (README "Use Fader
from any language"):

- context: ``targetingKey`` is the key; every other entry is an attribute (number, string,
  bool, list of strings; null means absent). A number with no fraction becomes an int,
  because Split's numeric and DATETIME matchers compare ints.
- the treatment is the flagd variant; String → the treatment; Boolean → ``on``/``true`` is
  true, ``off``/``false`` is false; Object → the treatment's config parsed as JSON;
  Int/Float → the config's number (a bare number, or ``{"value": n}``), else the treatment
  read as a JSON number.
- reason: DISABLED for a killed flag (no value, no variant, as flagd answers a disabled flag),
  STATIC for a flag that answers every key alike, DEFAULT for Split's default-treatment labels,
  TARGETING_MATCH otherwise.
- errors are flagd's error codes, which the service sends as gRPC statuses.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fader.flagd import resolve
from fader.flagd import result as flagd_result
from fader.rules.model import CompiledFlag
from fader.rules.result import (
    LABEL_DEFAULT_RULE,
    LABEL_EXCEPTION,
    LABEL_KILLED,
    LABEL_NOT_FOUND,
    LABEL_NOT_IN_SPLIT,
    LABEL_PREREQUISITES_NOT_MET,
    Decision,
)
from google.protobuf import struct_pb2

from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest, Refusal
from sidecar.core.requests import check_key, check_name

TARGETING_KEY = "targetingKey"

REASON_STATIC = "STATIC"
REASON_TARGETING_MATCH = "TARGETING_MATCH"
REASON_DEFAULT = "DEFAULT"
REASON_DISABLED = "DISABLED"

# flagd's error codes (core/pkg/model); the service turns each into its gRPC status.
FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
TYPE_MISMATCH = "TYPE_MISMATCH"
PARSE_ERROR = "PARSE_ERROR"
GENERAL = "GENERAL"

# Split labels that mean "the flag's default treatment was served".
DEFAULT_LABELS = frozenset((LABEL_DEFAULT_RULE, LABEL_NOT_IN_SPLIT, LABEL_PREREQUISITES_NOT_MET))

TRUE_TREATMENTS = frozenset(("on", "true"))
FALSE_TREATMENTS = frozenset(("off", "false"))

# A treatment is read as a number only when it is written as a JSON number: "1_000", " 7",
# "inf" or "0x10" are names, not numbers.
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# configuration_change entry types (flagd core/pkg/model NotificationCreate/Update/Delete).
CHANGE_WRITE = "write"
CHANGE_UPDATE = "update"
CHANGE_DELETE = "delete"


# flagd's gRPC status (flagd flag_evaluator.go errFormat) and HTTP status (OFREP) for each
# error code; GENERAL is UNKNOWN, as flagd returns an unclassified error.
STATUS_OF_ERROR: dict[str, tuple[str, int]] = {
    FLAG_NOT_FOUND: ("NOT_FOUND", 404),
    TYPE_MISMATCH: ("INVALID_ARGUMENT", 400),
    PARSE_ERROR: ("DATA_LOSS", 400),
    GENERAL: ("UNKNOWN", 500),
}


class FlagdError(Refusal):
    """An evaluation flagd reports as an error status; `error_code` is flagd's name for it."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.code, self.http_status = STATUS_OF_ERROR[error_code]


def evaluation_context(
    context: struct_pb2.Struct, policy: AttributePolicy
) -> tuple[str, dict[str, object] | None]:
    """(key, attributes) from a flagd context Struct; BadRequest names the offending entry.
    flagd's own type rules turn each entry into a Python value, then the attribute policy
    every lane shares checks the count and sizes (each refusal counted)."""
    fields = context.fields
    key_value = fields.get(TARGETING_KEY)
    if key_value is None or key_value.WhichOneof("kind") != "string_value":
        raise BadRequest(
            f"context.{TARGETING_KEY}: a string is required (Fader evaluates flags per key)"
        )
    key = key_value.string_value
    check_key(key, f"context.{TARGETING_KEY}")
    policy.check_count(len(fields) - 1, "context")
    values: dict[str, object] = {}
    for name, value in fields.items():
        if name == TARGETING_KEY:
            continue
        if not name:
            raise BadRequest("context: an attribute name is empty")
        converted = _attribute(name, value)
        if converted is not None:
            values[name] = converted
    return key, policy.admit(values, "context")


# How deep and how big a flagd-dialect context may be: its rules read nested objects, but a
# request must not make the sidecar walk an unbounded tree.
MAX_CONTEXT_DEPTH = 16


def typed_context(
    context: struct_pb2.Struct, policy: AttributePolicy
) -> tuple[str, dict[str, object] | None]:
    """(key, data) for a flagd-dialect flag, whose JsonLogic rules read the context whole:
    nested objects and lists of any JSON value are kept, and ``targetingKey`` is optional
    (the key is then empty; rules that need it answer their default). The targeting key
    stays in the data, as flagd's rules read it with ``{"var": "targetingKey"}``. The
    policy's count applies to the top level, its size limit to every string, and the
    whole context may hold at most ``max_attributes`` x 16 values."""
    fields = context.fields
    policy.check_count(len(fields) - (TARGETING_KEY in fields), "context")
    budget = [policy.max_attributes * 16]
    data: dict[str, object] = {}
    for name, value in fields.items():
        if not name:
            raise BadRequest("context: an attribute name is empty")
        converted = _json_value(value, f"context[{name!r}]", policy, budget, 0)
        if converted is not None:
            data[name] = converted
    key = data.get(TARGETING_KEY)
    if isinstance(key, str) and key:
        check_key(key, f"context.{TARGETING_KEY}")
    else:
        key = ""
    return key, data or None


def _json_value(
    value: struct_pb2.Value, where: str, policy: AttributePolicy, budget: list[int], depth: int
) -> object:
    budget[0] -= 1
    if budget[0] < 0:
        raise BadRequest(f"{where}: the context holds too many values")
    if depth > MAX_CONTEXT_DEPTH:
        raise BadRequest(f"{where}: nested deeper than {MAX_CONTEXT_DEPTH} levels")
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        text = value.string_value
        if len(text) > policy.max_size:
            raise policy.too_long_at(where, len(text))
        return text
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "struct_value":
        return {
            name: _json_value(item, f"{where}.{name}", policy, budget, depth + 1)
            for name, item in value.struct_value.fields.items()
        }
    if kind == "list_value":
        return [
            _json_value(item, f"{where}[{index}]", policy, budget, depth + 1)
            for index, item in enumerate(value.list_value.values)
        ]
    return None


def is_typed(flag: CompiledFlag | None) -> bool:
    """A flag whose variants carry typed values (flagd's dialect)."""
    return flag is not None and flag.values is not None


def _attribute(name: str, value: struct_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "list_value":
        items = value.list_value.values
        if all(item.WhichOneof("kind") == "string_value" for item in items):
            return [item.string_value for item in items]
        raise BadRequest(f"context[{name!r}]: a list attribute must hold only strings")
    if kind == "null_value":
        return None
    raise BadRequest(
        f"context[{name!r}]: {kind or 'no value'} is not an attribute type "
        "(number, string, bool or list of strings)"
    )


def _number(number: float) -> int | float:
    if number.is_integer() and INT64_MIN <= number <= INT64_MAX:
        return int(number)
    return number


def reason(flag: CompiledFlag | None, result: Decision) -> str:
    """flagd's reason for `result` of `flag`; FlagdError for a missing flag or a failure."""
    label = result.label
    if flag is None or label == LABEL_NOT_FOUND:
        raise FlagdError(FLAG_NOT_FOUND, "flag not found")
    if flag.values is not None:
        return _typed_reason(label)
    if label == LABEL_EXCEPTION:
        raise FlagdError(GENERAL, "the flag's rules failed to evaluate")
    if label == LABEL_KILLED:
        return REASON_DISABLED
    if not flag.has_targeting:
        return REASON_STATIC
    if label in DEFAULT_LABELS:
        return REASON_DEFAULT
    return REASON_TARGETING_MATCH


def _typed_reason(label: str | None) -> str:
    """A flagd-dialect flag's reason is its label's (fader.flagd.result)."""
    error = flagd_result.ERRORS.get(label or "")
    if error is not None:
        raise FlagdError(error, flagd_result.ERROR_MESSAGES[label or ""])
    return flagd_result.REASONS[label or ""]


def has_value(flag: CompiledFlag | None, result: Decision) -> bool:
    """Whether an answer carries a value and a variant: not for a disabled flag, nor for
    a flagd flag that fell to a missing default variant."""
    if flag is not None and flag.values is not None:
        return result.label not in flagd_result.WITHOUT_VALUE
    return result.label != LABEL_KILLED


def typed_value(flag: CompiledFlag, result: Decision, kind: str) -> Any:
    """The variant's value for a ``kind`` resolve (flagd's typing rules, as in process:
    ``fader.flagd.resolve.typed_value``); TYPE_MISMATCH when it is of another type."""
    assert flag.values is not None
    try:
        return resolve.typed_value(flag.name, result.treatment, flag.values[result.treatment], kind)
    except resolve.TypeMismatch as err:
        raise FlagdError(TYPE_MISMATCH, str(err)) from None


def string_value(result: Decision) -> str:
    return result.treatment


def boolean_value(result: Decision) -> bool:
    treatment = result.treatment
    if treatment in TRUE_TREATMENTS:
        return True
    if treatment in FALSE_TREATMENTS:
        return False
    raise FlagdError(
        TYPE_MISMATCH, f"treatment {treatment!r} is not a boolean (on/true or off/false)"
    )


def object_value(result: Decision) -> dict[str, Any]:
    config = _parsed_config(result)
    if not isinstance(config, dict):
        raise FlagdError(TYPE_MISMATCH, f"treatment {result.treatment!r} has no JSON object config")
    return config


def int_value(result: Decision) -> int:
    number = _number_of(result)
    if isinstance(number, int) and INT64_MIN <= number <= INT64_MAX:
        return number
    if isinstance(number, float) and number.is_integer() and INT64_MIN <= number <= INT64_MAX:
        return int(number)
    raise FlagdError(TYPE_MISMATCH, f"treatment {result.treatment!r} has no integer value")


def float_value(result: Decision) -> float:
    number = _number_of(result)
    if number is None:
        raise FlagdError(TYPE_MISMATCH, f"treatment {result.treatment!r} has no number value")
    return float(number)


def _number_of(result: Decision) -> int | float | None:
    """The config's number (bare, or under "value"), else the treatment as a JSON number."""
    config = _parsed_config(result)
    if isinstance(config, dict):
        config = config.get("value")
    number = _as_number(config)
    if number is None and JSON_NUMBER.fullmatch(result.treatment):
        number = _as_number(json.loads(result.treatment))
    return number


def _as_number(value: object) -> int | float | None:
    """`value` if it is a finite JSON number (a bool is not one), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _parsed_config(result: Decision) -> object:
    if result.config is None:
        return None
    try:
        return json.loads(result.config)
    except ValueError:
        raise FlagdError(
            PARSE_ERROR, f"the config of treatment {result.treatment!r} is not valid JSON"
        ) from None


def metadata(result: Decision, version: int, flag: CompiledFlag | None = None) -> dict[str, Any]:
    """What flagd calls flag metadata. A flagd-dialect flag's own (its flag set's metadata
    under the flag's). For a Split flag: the Split label that explains the answer and the
    snapshot version it came from (flagd's own "version" key means the flag-set version)."""
    if flag is not None and flag.metadata is not None:
        return dict(flag.metadata)
    meta: dict[str, Any] = {"version": version}
    if result.label is not None:
        meta["label"] = result.label
    return meta


def flag_set(selector: str | None) -> str | None:
    """The flag set a ``Flagd-Selector`` header names: ``flagSetId=<set>`` or a bare name.

    Fader has flag sets but no per-source flags, so ``source=...`` cannot be honoured.
    """
    if selector is None:
        return None
    name, sep, value = selector.strip().partition("=")
    if not sep:
        value = name
    elif name != "flagSetId":
        raise BadRequest(
            f"Flagd-Selector {selector!r}: only flagSetId=<flag set> (or a bare flag set name) "
            "is supported"
        )
    value = value.strip()
    if not value:
        raise BadRequest(f"Flagd-Selector {selector!r}: the flag set name is empty")
    check_name(value, "Flagd-Selector")
    return value


def in_flag_set(flag: CompiledFlag | None, selected: str | None) -> bool:
    return selected is None or (flag is not None and selected in flag.sets)


def change_notifications(
    previous: Mapping[str, CompiledFlag],
    current: Mapping[str, CompiledFlag],
    changed: Sequence[str],
    selected: str | None,
) -> dict[str, dict[str, str]]:
    """flagd's configuration_change ``data.flags``: {flag: {"type": write|update|delete}} for
    the changed flags that are (or were) in the selected flag set."""
    notifications: dict[str, dict[str, str]] = {}
    for name in changed:
        before, after = previous.get(name), current.get(name)
        if not (in_flag_set(before, selected) or in_flag_set(after, selected)):
            continue
        if before is None:
            kind = CHANGE_WRITE
        elif after is None:
            kind = CHANGE_DELETE
        else:
            kind = CHANGE_UPDATE
        notifications[name] = {"type": kind}
    return notifications
