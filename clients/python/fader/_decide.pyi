"""Types of the C extension `fader._decide` (clients/python/fader/_decide.c)."""

from collections.abc import Callable, Mapping
from typing import Any

from fader.impressions import Answer
from fader.rules.result import Decision

class Decide:
    """decide(key, flag, bucketing_key, attributes) -> Decision: `evaluate`'s decision for a
    lookup the sidecar's rules take as it is, recorded with `record`; any other lookup is
    `slow(key, flag, bucketing_key, attributes)`."""

    def __init__(
        self,
        evaluate: Callable[[str, str, str | None, Mapping[str, Any] | None], Decision],
        record: Callable[[Answer], object] | None,
        slow: Callable[[str, str, str | None, Mapping[str, Any] | None], Decision],
        not_found: Decision,
        max_size: int,
        max_attributes: int,
    ) -> None: ...
    def __call__(
        self, key: str, flag: str, bucketing_key: str | None, attributes: Mapping[str, Any] | None
    ) -> Decision: ...
