"""Types of the C extension `fader._modes` (clients/python/fader/_modes.c)."""

from collections.abc import Callable, Iterable

from fader.impressions import Impression, Pending
from fader.snapshot.snapshot import Snapshot

class Observer:
    """Split's impression observer: impression hash -> the last time it was seen, bounded:
    remembers at least `capacity` hashes, at most twice that."""

    @property
    def capacity(self) -> int: ...
    def __init__(self, capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def test_and_set(self, digest: int, time_ms: int, /) -> int | None:
        """The previous time `digest` was seen (None: not remembered), storing the later of
        the two; an out-of-order older time is returned as the earlier of the two."""

    def generations(self) -> tuple[dict[int, int], dict[int, int]]:
        """(young, old) as dicts of hash -> time: the observer's state, for inspection."""

def process_all(
    requests: Iterable[Pending],
    mode: str,
    observer: Observer,
    counts: dict[tuple[str, int], int],
    add_key: Callable[[str, str, int], None],
    disabled_in: Callable[[Snapshot], frozenset[str]],
    impression: type[Impression],
    made: list[Impression],
    /,
) -> tuple[int, int]:
    """Applies the impressions mode to `requests`: impressions appended to `made`, counts
    merged into `counts`, keys given to `add_key`, hashes kept in `observer`. Returns
    (emitted, deduplicated)."""

def encode_impressions(impressions: list[Impression], field_number: int, /) -> bytes:
    """The protobuf wire bytes of `impressions` as entries of the repeated fader.v1.Impression
    field `field_number`: what `add_messages` and SerializeToString wrote for them. TypeError
    for a wrong type, ValueError for an int out of its field's range or a lone surrogate."""
