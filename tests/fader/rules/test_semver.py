"""Split's semver parsing and ordering against the Python SDK's own data files."""

from __future__ import annotations

import csv

import pytest
from fader.rules import semver

from tests.vectors import split_vector


def _rows(name: str) -> list[list[str]]:
    with split_vector(f"semver/{name}").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    return rows[1:]  # every file starts with a header row


def test_valid_versions_are_ordered() -> None:
    rows = _rows("valid-semantic-versions.csv")
    assert rows
    for higher, lower in rows:
        high, low = semver.parse(higher), semver.parse(lower)
        assert high.compare(low) == 1, (higher, lower)
        assert low.compare(high) == -1, (higher, lower)


def test_invalid_versions_are_refused() -> None:
    rows = _rows("invalid-semantic-versions.csv")
    assert rows
    for (text,) in rows:
        assert semver.parse_or_none(text) is None, text
        with pytest.raises(semver.SemverError):
            semver.parse(text)


def test_equality_counts_build_metadata() -> None:
    rows = _rows("equal-to-semver.csv")
    assert rows
    for first, second, equals in rows:
        assert (semver.parse(first).version == semver.parse(second).version) == (
            equals == "true"
        ), (first, second)


def test_between_is_inclusive() -> None:
    rows = _rows("between-semver.csv")
    assert rows
    for low, value, high, expected in rows:
        v = semver.parse(value)
        inside = semver.parse(low).compare(v) <= 0 and semver.parse(high).compare(v) >= 0
        assert inside == (expected == "true"), (low, value, high)


def test_normalisation() -> None:
    assert semver.parse("1.0.0-rc.01").version == "1.0.0-rc.1"
    assert semver.parse("1.1.1+meta").version == "1.1.1+meta"
    assert semver.parse("2.0.0").compare(semver.parse("2.0.0-rc.1")) == 1
    assert semver.parse("1.0.0-alpha.10").compare(semver.parse("1.0.0-alpha.9")) == 1
    assert semver.parse("1.0.0-alpha.beta").compare(semver.parse("1.0.0-alpha")) == 1
