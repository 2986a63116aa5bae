"""JavaScript's value rules, which JsonLogic inherits: truthiness, coercions, equality.

JsonLogic was specified by its JavaScript implementation, and flagd's rules are written
against it (`{"==": [1, "1"]}` is true, `[]` is false, `{"cat": [1.0]}` is "1"). The
evaluator reads JSON values as Python gives them (dict, list, str, int, float, bool, None)
and applies these rules, so a rule means the same here as in every flagd provider.
"""

from __future__ import annotations

import math
from typing import Any

NAN = math.nan


def truthy(value: Any) -> bool:
    """JavaScript truthiness, with JsonLogic's one change: an empty array is false."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, int | float):
        return value == value and value != 0  # NaN is false
    if isinstance(value, str | list):
        return len(value) > 0
    return True


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_number(value: Any) -> float | int:
    """JavaScript's ``Number(value)``: NaN when the value is not numeric."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        if "_" in text or text.lower() in ("inf", "-inf", "+inf", "nan", "infinity", "-infinity"):
            return NAN
        try:
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return NAN
    if isinstance(value, list):
        if not value:
            return 0
        if len(value) == 1:
            return to_number(to_string(value[0]))
    return NAN


def number_text(number: float | int) -> str:
    """How JavaScript prints a number: integral values without ``.0``."""
    if isinstance(number, int):
        return str(number)
    if number != number:
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number.is_integer() and abs(number) < 1e21:
        return str(int(number))
    return repr(number)


def to_string(value: Any) -> str:
    """JavaScript's ``String(value)`` (arrays join with commas, null inside them is empty)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return number_text(value)
    if isinstance(value, list):
        return ",".join("" if item is None else to_string(item) for item in value)
    return "[object Object]"


def strict_equal(left: Any, right: Any) -> bool:
    """``===``: same type and value; arrays and objects only equal themselves."""
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, list | dict) or isinstance(right, list | dict):
        return left is right
    return type(left) is type(right) and left == right


def _primitive(value: Any) -> Any:
    """JavaScript's ToPrimitive for arrays and objects: their string form."""
    return to_string(value) if isinstance(value, list | dict) else value


def loose_equal(left: Any, right: Any) -> bool:
    """``==``: JavaScript's abstract equality (null equals only null here, as JSON has no
    undefined; numbers and strings compare as numbers; booleans as 0 and 1)."""
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, list | dict) and isinstance(right, list | dict):
        return left is right
    left, right = _primitive(left), _primitive(right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if isinstance(left, bool) and isinstance(right, bool):
        return left == right
    return bool(to_number(left) == to_number(right))


def less_than(left: Any, right: Any) -> bool:
    """JavaScript's ``<``: strings compare as strings, everything else as numbers."""
    left, right = _primitive(left), _primitive(right)
    if isinstance(left, str) and isinstance(right, str):
        return _order(left, right) < 0
    return bool(to_number(left) < to_number(right))


def less_or_equal(left: Any, right: Any) -> bool:
    left, right = _primitive(left), _primitive(right)
    if isinstance(left, str) and isinstance(right, str):
        return _order(left, right) <= 0
    return bool(to_number(left) <= to_number(right))


def _order(left: str, right: str) -> int:
    """JavaScript orders strings by UTF-16 code units (code points agree below U+10000)."""
    if not (left.isascii() and right.isascii()):
        a, b = left.encode("utf-16-be"), right.encode("utf-16-be")
        return (a > b) - (a < b)
    return (left > right) - (left < right)
