"""One attribute policy for every lane: how many attributes, how long, which types.

Matching cost grows with the number of attributes and the length of strings, so both are
bounded (`--max-attributes`, `--max-attribute-size`) and every refusal is counted in
``fader_limit_refusals_total{limit}``. Every decoder calls this policy: protobuf decoders use
its pieces inline (`check_count`, `too_long`) to stay one pass over the wire map, decoders
that already hold Python values (msgpack, JSON, a flagd context) call `admit`.

The engine's types are kept apart on purpose: an int stays an int and a float a float,
because Split's numeric matchers accept only integers; a timestamp becomes whole seconds
since the epoch, the unit of Split's DATETIME matchers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sidecar import limits
from sidecar.core.refusals import BadRequest

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SCALARS = (str, bool, int, float)
TYPES_ALLOWED = "string, integer, float, boolean, array of strings, timestamp"

# Turns a lane's own extra value type (a msgpack timestamp, say) into an engine value, or
# returns None when the value is not of that type.
Other = Callable[[object], object | None]


class AttributePolicy:
    """The limits of `--max-attributes` and `--max-attribute-size`, applied uniformly."""

    __slots__ = ("max_attributes", "max_size")

    def __init__(
        self, max_attributes: int, max_size: int = limits.DEFAULT_MAX_ATTRIBUTE_SIZE
    ) -> None:
        self.max_attributes = max_attributes
        self.max_size = max_size

    def check_count(self, count: int, where: str) -> None:
        if count > self.max_attributes:
            limits.REFUSALS.count(limits.ATTRIBUTES)
            raise BadRequest(f"{where}: {count} entries, at most {self.max_attributes} allowed")

    def too_long(self, where: str, name: str, size: int) -> BadRequest:
        """The refusal of a string (or string list) over the size limit, counted."""
        return self.too_long_at(f"{where}[{name!r}]", size)

    def too_long_at(self, path: str, size: int) -> BadRequest:
        """`too_long` for a value at any path (a nested JSON context, say)."""
        limits.REFUSALS.count(limits.ATTRIBUTE_SIZE)
        return BadRequest(f"{path}: {size} characters, at most {self.max_size} allowed")

    def check_list(self, where: str, name: str, items: list[str]) -> list[str]:
        size = sum(map(len, items))
        if size > self.max_size:
            raise self.too_long(where, name, size)
        return items

    def admit(
        self, values: Mapping[str, object], where: str, other: Other | None = None
    ) -> dict[str, object] | None:
        """Engine attributes from Python values (None when there are none): the count, every
        name, every type and every size checked; `other` converts a lane's extra type."""
        if not values:
            return None
        self.check_count(len(values), where)
        max_size = self.max_size
        admitted: dict[str, object] = {}
        for name, value in values.items():
            if not name or not isinstance(name, str):
                raise BadRequest(f"{where}: an attribute name is empty or not a string")
            if isinstance(value, str):
                if len(value) > max_size:
                    raise self.too_long(where, name, len(value))
            elif isinstance(value, SCALARS):
                if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
                    raise BadRequest(f"{where}[{name!r}]: {value} does not fit in 64 bits")
            elif isinstance(value, list) and all(isinstance(item, str) for item in value):
                self.check_list(where, name, value)
            else:
                value = self._other(where, name, value, other)
            admitted[name] = value
        return admitted

    @staticmethod
    def _other(where: str, name: str, value: object, other: Other | None) -> object:
        converted = other(value) if other is not None else None
        if converted is None:
            raise BadRequest(
                f"{where}[{name!r}]: {type(value).__name__} is not one of {TYPES_ALLOWED}"
            )
        return converted
