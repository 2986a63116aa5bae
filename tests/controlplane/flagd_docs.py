"""flagd flags documents for the control-plane tests: small, and saying what they test."""

from __future__ import annotations

from typing import Any


def flagd_flag(
    default: str = "off", targeting: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A boolean flagd flag with variants ``on``/``off``."""
    raw: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": default,
    }
    if targeting is not None:
        raw["targeting"] = targeting
    raw.update(fields)
    return raw


PRO_GETS_ON: dict[str, Any] = {"if": [{"$ref": "is-pro"}, "on", "off"]}


def flagd_file(**flags: dict[str, Any]) -> dict[str, Any]:
    """A plain flagd flags file: ``new-ui`` (on for plan=pro, through an evaluator) and
    ``color`` (a string flag), plus any ``flags`` given, with set metadata."""
    return {
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": {
            "new-ui": flagd_flag(targeting=PRO_GETS_ON),
            "color": {
                "state": "ENABLED",
                "variants": {"red": "#f00", "blue": "#00f"},
                "defaultVariant": "red",
            },
            **flags,
        },
        "$evaluators": {"is-pro": {"==": [{"var": "plan"}, "pro"]}},
        "metadata": {"flagSetId": "shop"},
    }
