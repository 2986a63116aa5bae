"""Types of the C extension `fader._modes` (clients/python/fader/_modes.c)."""

from collections.abc import Callable, Iterable

from fader.impressions import Impression, Observer, Pending
from fader.snapshot.snapshot import Snapshot

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
    merged into `counts`, keys given to `add_key`, the observer's generations updated (its
    `young` and `old` replaced at capacity). Returns (emitted, deduplicated)."""
