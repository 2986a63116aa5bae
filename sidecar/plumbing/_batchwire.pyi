"""Types of the C extension sidecar/plumbing/_batchwire.c."""

from collections.abc import Callable, Iterable

from fader.impressions import Answer
from fader.rules.result import Decision

# An item as read: (key, bucketing key or None, flag, attributes). The attributes are a dict
# built from remembered entries, None when the item has none, or, for an item listed in
# `pending`, its entries' bytes.
Read = tuple[str, str | None, str, dict[str, object] | tuple[bytes, ...] | None]

class WireError(ValueError):
    """The bytes are not the request they were read as; the message is upb's reason."""

def read_batch(
    data: bytes,
    known: dict[bytes, tuple[str, object]],
    max_key: int,
    max_name: int,
    max_attributes: int,
    max_items: int,
    /,
) -> tuple[list[Read], list[int], int]: ...
def tally(counts: dict[tuple[str, Decision], int], answers: Iterable[Answer], /) -> None: ...
def join_entries(
    entries: dict[tuple[str, Decision], bytes],
    answers: Iterable[Answer],
    missing: Callable[[tuple[str, Decision]], bytes],
    /,
) -> bytes: ...
def read_exposures(
    data: bytes, from_field: int, to_field: int, max_key: int, max_name: int, /
) -> tuple[bytes, int, str | None, bytes]: ...
