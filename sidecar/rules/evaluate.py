"""The lookup entry point shared by every adapter (gRPC, flagd, fast lane, CLI)."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.rules.model import Attributes, CompiledFlag
from sidecar.rules.result import NOT_FOUND, Result


def evaluate(
    flags: Mapping[str, CompiledFlag],
    key: str,
    flag: str,
    bucketing_key: str | None = None,
    attributes: Attributes | None = None,
) -> Result:
    """Treatment of ``flag`` for ``key``; never raises.

    An unknown flag is ``control`` / "definition not found"; an unexpected error inside a
    flag's rules is ``control`` / "exception", as Split's SDKs answer.
    """
    compiled = flags.get(flag)
    if compiled is None:
        return NOT_FOUND
    try:
        return compiled.run(key, key if bucketing_key is None else bucketing_key, attributes)
    except Exception:
        return compiled.exception_result
