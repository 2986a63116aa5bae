"""Types of the C extension `fader._modes` (clients/python/fader/_modes.c)."""

from collections.abc import Callable, Iterable

from fader.impressions import Answer, Impression, Pending
from fader.rules.result import Decision
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

class Recorder:
    """The hot path's side of impressions: requests' lookups, waiting for the modes, at most
    `capacity` of them; requests of the same snapshot and millisecond share an entry."""

    @property
    def capacity(self) -> int: ...
    @property
    def size(self) -> int:
        """Lookups waiting."""

    @property
    def overflow(self) -> int:
        """Lookups not recorded because `capacity` were waiting."""

    def __init__(self, capacity: int) -> None: ...
    def record(self, snapshot: Snapshot, time_ms: int, lookups: list[Answer], /) -> None:
        """Records a request's lookups, evaluated on `snapshot` at `time_ms`; the list is
        never changed afterwards."""

    def record_one(
        self,
        snapshot: Snapshot,
        key: str,
        bucketing_key: str | None,
        flag: str,
        result: Decision,
        /,
    ) -> None:
        """Records one lookup, evaluated on `snapshot` now (the clock of time.time_ns)."""

    def take(self, limit: int | None, /) -> list[Pending]:
        """The oldest entries, until they hold at least `limit` lookups (None: all), no
        longer waiting."""

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

def encode_all(
    requests: Iterable[Pending],
    mode: str,
    observer: Observer,
    counts: dict[tuple[str, int], int],
    add_key: Callable[[str, str, int], None],
    disabled_in: Callable[[Snapshot], frozenset[str]],
    field_number: int,
    /,
) -> tuple[bytes, int, int, int]:
    """`process_all`, with each impression written as an entry of the repeated
    fader.v1.Impression field `field_number` (what `encode_impressions` writes for it) rather
    than made. Returns (entries, emitted, deduplicated, unencodable): an impression the
    encoder refuses is counted as unencodable and left out."""

def cut_entries(
    entries: bytes | bytearray | memoryview,
    field_number: int,
    start: int,
    max_entries: int,
    max_bytes: int,
    /,
) -> tuple[int, int]:
    """Walks the entries of the repeated field `field_number` from byte `start`, stopping
    after `max_entries`, after the one that reaches `max_bytes` bytes, or at the end.
    Returns (end, taken); ValueError if it meets anything but such entries."""

def encode_impressions(impressions: list[Impression], field_number: int, /) -> bytes:
    """The protobuf wire bytes of `impressions` as entries of the repeated fader.v1.Impression
    field `field_number`: what `add_messages` and SerializeToString wrote for them. TypeError
    for a wrong type, ValueError for an int out of its field's range or a lone surrogate."""
