"""Semantic versions as Split's Python SDK reads them.

The parser is deliberately Split's, not semver.org's: ``int()`` is used for the core
numbers (so ``+1`` or `` 1`` parse), numeric pre-release parts lose leading zeros, and
build metadata is part of the equality key but not of ordering.
"""

from __future__ import annotations

from dataclasses import dataclass


class SemverError(ValueError):
    """The string is not a version Split would accept."""


@dataclass(frozen=True, slots=True)
class Semver:
    """A parsed version; ``version`` is the normalized string used for equality."""

    major: int
    minor: int
    patch: int
    pre_release: tuple[str, ...]
    version: str

    @property
    def is_stable(self) -> bool:
        return not self.pre_release

    def compare(self, other: Semver) -> int:
        """-1, 0 or 1: core numbers, then stable > pre-release, then pre-release parts."""
        if self.version == other.version:
            return 0
        for mine, theirs in (
            (self.major, other.major),
            (self.minor, other.minor),
            (self.patch, other.patch),
        ):
            if mine != theirs:
                return 1 if mine > theirs else -1
        if self.is_stable != other.is_stable:
            return 1 if self.is_stable else -1
        for mine_part, their_part in zip(self.pre_release, other.pre_release, strict=False):
            if mine_part == their_part:
                continue
            if mine_part.isnumeric() and their_part.isnumeric():
                return _cmp(int(mine_part), int(their_part))
            return _cmp(mine_part, their_part)
        return _cmp(len(self.pre_release), len(other.pre_release))


def _cmp(a: int | str, b: int | str) -> int:
    if a == b:
        return 0
    return 1 if a > b else -1  # type: ignore[operator]


def parse(text: str) -> Semver:
    """Parse ``text`` or raise SemverError."""
    core, _, metadata = text.partition("+")
    if "+" in text and metadata == "":
        raise SemverError(f"metadata is empty after '+': {text!r}")
    pre_release: list[str] = []
    index = core.find("-")
    if index != -1:
        pre_data = core[index + 1 :]
        if pre_data == "":
            raise SemverError(f"pre-release is empty after '-': {text!r}")
        core = core[:index]
        for part in pre_data.split("."):
            pre_release.append(str(_int(part, text)) if part.isnumeric() else part)
    parts = core.split(".")
    if len(parts) != 3:
        raise SemverError(f"expected MAJOR.MINOR.PATCH: {text!r}")
    major, minor, patch = (_int(p, text) for p in parts)
    version = f"{major}.{minor}.{patch}"
    if pre_release:
        version += "-" + ".".join(pre_release)
    if metadata:
        version += "+" + metadata
    return Semver(major, minor, patch, tuple(pre_release), version)


def _int(part: str, text: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise SemverError(f"not a number {part!r} in {text!r}") from None


def parse_or_none(text: str) -> Semver | None:
    """Parse ``text``; None when it is not a valid version (matchers then do not match)."""
    try:
        return parse(text)
    except SemverError:
        return None
