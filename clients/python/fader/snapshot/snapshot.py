"""The immutable Snapshot every lookup reads.

A request takes one reference to a Snapshot and uses only it, so an answer never mixes
two versions; nothing in a Snapshot changes after it is built.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from fader.flagd.document import FlagdSet
from fader.rules.compile import CompiledRules
from fader.rules.evaluate import make_evaluate
from fader.rules.model import CompiledFlag, Members
from fader.rules.result import Decision
from fader.snapshot.codec import RawDocument
from fader.snapshot.issues import Issue


class Snapshot:
    """One complete, versioned set of flags and segments, compiled and ready to evaluate."""

    __slots__ = (
        "__weakref__",
        "_flags",
        "_names",
        "_rules",
        "_runs",
        "document",
        "evaluate",
        "flagd",
        "kind",
        "loaded_at",
        "source",
        "version",
        "versioned",
        "warnings",
    )

    evaluate: Callable[..., Decision]
    """``evaluate(key, flag, bucketing_key=None, attributes=None) -> Decision``; never raises.

    A closure over this snapshot's flags (``rules.evaluate.make_evaluate``) rather than a
    method: the hot path then costs one Python frame less.
    """

    def __init__(
        self,
        version: int,
        rules: CompiledRules,
        *,
        source: str,
        kind: str = "fader",
        warnings: Iterable[Issue] = (),
        loaded_at: float | None = None,
        document: RawDocument | None = None,
        flagd: FlagdSet | None = None,
        versioned: bool = True,
    ) -> None:
        self.version = version
        # A plain flagd file has no version: the Store numbers it (the active version + 1)
        # as it swaps it in, before anyone reads it.
        self.versioned = versioned
        # The flagd-dialect flags as flagd sync serves them (None: the snapshot has none);
        # they are also compiled in ``flags``, like the Split flags.
        self.flagd = flagd
        self._rules = rules
        self._flags: Mapping[str, CompiledFlag] = rules.flags
        self._names: tuple[str, ...] | None = None  # sorted on first use, not while loading
        self.source = source
        self.kind = kind
        self.warnings = tuple(warnings)
        self.loaded_at = time.time() if loaded_at is None else loaded_at
        # what it was built from, for lanes that re-serve definitions (None: not kept)
        self.document = document
        self._runs = {name: flag.run for name, flag in self._flags.items()}
        self.evaluate = make_evaluate(self._flags, self._runs)

    @property
    def flags(self) -> Mapping[str, CompiledFlag]:
        return self._flags

    @property
    def flag_count(self) -> int:
        return len(self._flags)

    @property
    def segment_count(self) -> int:
        return len(self._rules.segments)

    @property
    def segments(self) -> Mapping[str, Members]:
        """Segment name -> its keys. Read only, and only while holding this snapshot: the
        Reaper empties these tables once nothing references the snapshot any more."""
        return self._rules.segments

    @property
    def segment_key_count(self) -> int:
        return sum(len(keys) for keys in self._rules.segments.values())

    def flag_names(self) -> tuple[str, ...]:
        """Every active flag, sorted."""
        names = self._names
        if names is None:
            names = self._names = tuple(sorted(self._flags))
        return names

    def flags_in_sets(self, sets: Iterable[str]) -> tuple[str, ...]:
        """Active flags belonging to any of ``sets``, sorted."""
        wanted = frozenset(sets)
        flags = self._flags
        return tuple(name for name in self.flag_names() if not wanted.isdisjoint(flags[name].sets))

    def changed_flags(self, previous: Snapshot | None) -> tuple[str, ...]:
        """Flags added, removed or whose definition changed since ``previous``, sorted.

        A flag counts as changed when its JSON definition differs, or when a segment it
        names has different keys.
        """
        if previous is None:
            return self.flag_names()
        changed = set(self._flags).symmetric_difference(previous.flags)
        ours, theirs = self._rules.segments, previous._rules.segments
        changed_segments = {
            name for name in set(ours) | set(theirs) if ours.get(name) != theirs.get(name)
        }
        for name, flag in self._flags.items():
            before = previous.flags.get(name)
            if before is None:
                continue
            if before.digest != flag.digest or not changed_segments.isdisjoint(flag.segment_names):
                changed.add(name)
        return tuple(sorted(changed))

    def release_step(self, batch: int = 200) -> bool:
        """Free a bounded part of a retired snapshot; True while something is left.

        Only for the Reaper, once nothing else references this snapshot: afterwards it
        answers every flag as "definition not found".
        """
        tables = (self._rules.segments, self._runs, self._flags, self._rules.rule_based_segments)
        for table in tables:
            if table:
                assert isinstance(table, dict)
                for _ in range(min(batch, len(table))):
                    table.popitem()
                return True
        return False

    def __repr__(self) -> str:
        return f"Snapshot(version={self.version}, flags={self.flag_count}, source={self.source!r})"
