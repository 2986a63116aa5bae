"""Semantic versions as flagd's ``sem_ver`` operator reads them (semver.org 2.0.0).

This is not Split's parser (``fader.rules.semver``): flagd follows semver.org strictly
(``2.0.0.0`` is not a version), accepts a ``v``/``V`` prefix, pads partial versions
(``1`` and ``1.2`` mean ``1.0.0`` and ``1.2.0``), and ignores build metadata in every
comparison.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from fader.flagd.values import number_text

# semver.org's grammar: no leading zeros in numbers, dot-separated identifiers.
_VERSION = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)


class Version(NamedTuple):
    major: int
    minor: int
    patch: int
    pre_release: tuple[int | str, ...]

    def compare(self, other: Version) -> int:
        """-1, 0 or 1 by semver.org precedence (build metadata is not part of a Version)."""
        mine, theirs = self[:3], other[:3]
        if mine != theirs:
            return -1 if mine < theirs else 1
        if self.pre_release == other.pre_release:
            return 0
        if not self.pre_release:
            return 1
        if not other.pre_release:
            return -1
        for a, b in zip(self.pre_release, other.pre_release, strict=False):
            if a == b:
                continue
            if isinstance(a, int) and isinstance(b, int):
                return -1 if a < b else 1
            if isinstance(a, int):  # numeric identifiers sort before alphanumeric ones
                return -1
            if isinstance(b, int):
                return 1
            return -1 if a < b else 1
        return -1 if len(self.pre_release) < len(other.pre_release) else 1


def parse(value: Any) -> Version | None:
    """A version from a string or a number (``1.2`` reads as ``1.2.0``); None if invalid."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        text = number_text(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if text[:1] in ("v", "V"):
        text = text[1:]
    numbers = re.split(r"[-+]", text, maxsplit=1)[0]
    dots = numbers.count(".")
    if dots < 2:
        text = numbers + ".0" * (2 - dots) + text[len(numbers) :]
    match = _VERSION.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, pre, _build = match.groups()
    parts: tuple[int | str, ...] = ()
    if pre:
        parts = tuple(int(part) if part.isdigit() else part for part in pre.split("."))
    return Version(int(major), int(minor), int(patch), parts)


def compare(left: Version, operator: str, right: Version) -> bool | None:
    """``sem_ver``'s operators; None for an unknown operator (the rule then fails)."""
    if operator == "^":
        return left.major == right.major
    if operator == "~":
        return left.major == right.major and left.minor == right.minor
    order = left.compare(right)
    if operator == "=":
        return order == 0
    if operator == "!=":
        return order != 0
    if operator == "<":
        return order < 0
    if operator == "<=":
        return order <= 0
    if operator == ">":
        return order > 0
    if operator == ">=":
        return order >= 0
    return None


OPERATORS = frozenset(("=", "!=", "<", "<=", ">", ">=", "^", "~"))
