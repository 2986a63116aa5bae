"""The engine's decision for one lookup, and Split's fixed labels.

Decisions are immutable and, for every reachable (treatment, label) pair of a flag,
built once at compile time: evaluation returns a shared instance instead of
allocating one per request.
"""

from __future__ import annotations

from typing import NamedTuple

CONTROL = "control"

# Split's fixed labels (splitio/models/impressions.py `Label`); every other label is
# copied from the matched condition.
LABEL_KILLED = "killed"
LABEL_DEFAULT_RULE = "default rule"
LABEL_NOT_FOUND = "definition not found"
LABEL_NOT_IN_SPLIT = "not in split"
LABEL_EXCEPTION = "exception"
LABEL_PREREQUISITES_NOT_MET = "prerequisites not met"


class Decision(NamedTuple):
    """Treatment, the label that explains it, its dynamic config and the flag's change number.

    A NamedTuple: immutable, and several times cheaper to build than a frozen dataclass,
    which matters when a 10,000-flag snapshot builds 100,000 of them.
    """

    treatment: str
    label: str | None
    config: str | None
    change_number: int | None


NOT_FOUND = Decision(CONTROL, LABEL_NOT_FOUND, None, None)
