"""The lookup entry point shared by every adapter (gRPC, flagd, fast lane, CLI)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fader.rules.model import Attributes, CompiledFlag, EvalFn
from fader.rules.result import NOT_FOUND, Decision

Evaluate = Callable[..., Decision]


def make_evaluate(flags: Mapping[str, CompiledFlag], runs: Mapping[str, EvalFn]) -> Evaluate:
    """``evaluate(key, flag, bucketing_key=None, attributes=None) -> Decision`` for one snapshot.

    Never raises: an unknown flag is ``control`` / "definition not found"; an unexpected
    error inside a flag's rules is ``control`` / "exception", as Split's SDKs answer.
    ``runs`` maps each flag to its ``run`` closure: one dict lookup on the hot path.
    """
    get_run = runs.get

    def evaluate(
        key: str,
        flag: str,
        bucketing_key: str | None = None,
        attributes: Attributes | None = None,
    ) -> Decision:
        run = get_run(flag)
        if run is None:
            return NOT_FOUND
        try:
            return run(key, key if bucketing_key is None else bucketing_key, attributes)
        except Exception:
            return flags[flag].exception_result

    return evaluate
