"""Bucketing against every row of Split's own hash vectors, through the public function.

The row counts are those of the files in tests/vectors/split (three are subsampled; see its
README), so a truncated or swapped file fails here.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator

import mmh3
import pytest
from fader.rules.hashing import bucket, legacy_hash, murmur_hash

from tests.vectors import split_vector


def _csv_rows(name: str) -> Iterator[tuple[int, str, int, int]]:
    with split_vector(name).open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if not row or row[0].startswith("#"):
                continue
            seed, key, hash_value, bucket_value = row
            yield int(seed), key, int(hash_value), int(bucket_value)


def _jsonl_rows(name: str) -> Iterator[tuple[int, str, int, int]]:
    with split_vector(name).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                seed, key, hash_value, bucket_value = json.loads(line)
                yield seed, key, hash_value, bucket_value


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("murmur3-sample-data-v2.csv", 10_000),
        ("murmur3-custom-uuids.csv", 500),
        ("murmur3-sample-v3.csv", 1_126),
        ("murmur3-sample-v4.csv", 1_126),
    ],
)
def test_murmur_vectors(name: str, rows: int) -> None:
    count = 0
    for seed, key, hash_value, bucket_value in _csv_rows(name):
        assert murmur_hash(key, seed) == hash_value, (seed, key)
        assert bucket(key, seed, 2) == bucket_value, (seed, key)
        count += 1
    assert count == rows


def test_negative_seed_is_used_as_its_32_bit_pattern() -> None:
    rows = list(_csv_rows("murmur3-sample-v4.csv"))
    assert all(seed < 0 for seed, *_ in rows)


def test_obsolete_signed_v1_vectors_disagree_on_about_half() -> None:
    """The trap: signed murmur (java's old file) is not what Split computes today."""
    rows = list(_csv_rows("murmur3-sample-data.csv"))
    signed_ok = sum(mmh3.hash(key, seed & 0xFFFFFFFF, signed=True) == h for seed, key, h, _ in rows)
    ours_ok = sum(bucket(key, seed, 2) == b for seed, key, _, b in rows)
    assert signed_ok == len(rows) == 10_000
    assert 0.4 < ours_ok / len(rows) < 0.6


@pytest.mark.parametrize(
    ("name", "reader", "rows"),
    [
        ("sample-data.csv", _csv_rows, 10_000),
        ("small-data.csv", _csv_rows, 15),
        ("sample-data.jsonl", _jsonl_rows, 5_000),
        ("sample-data-non-alpha-numeric.jsonl", _jsonl_rows, 2_500),
    ],
)
def test_legacy_vectors(name: str, reader: object, rows: int) -> None:
    count = 0
    for seed, key, hash_value, bucket_value in reader(name):  # type: ignore[operator]
        assert legacy_hash(key, seed) == hash_value, (seed, key)
        assert bucket(key, seed, 1) == bucket_value, (seed, key)
        count += 1
    assert count == rows


def test_missing_or_unknown_algo_is_legacy() -> None:
    key, seed = "some-user", 12345
    assert bucket(key, seed, None) == bucket(key, seed, 1)
    assert bucket(key, seed, 3) == bucket(key, seed, 1)
    assert bucket(key, seed, True) == bucket(key, seed, 1)


def test_legacy_counts_utf16_code_units_outside_the_bmp() -> None:
    """U+1F600 is two UTF-16 units (Java/JS and the vector files); code points would give 1."""
    expected = 0
    for unit in (0xD83D, 0xDE00):
        expected = (31 * expected + unit) & 0xFFFFFFFF
    expected = expected - (1 << 32) if expected >= 1 << 31 else expected
    assert legacy_hash("\U0001f600", 0) == expected


LONE_SURROGATE_PROGRAM = """
from fader.rules.hashing import bucket, murmur_hash
from fader.snapshot.loader import build_snapshot
from tests.fader.rules.builders import condition, flag, snapshot_doc

for call in (lambda: murmur_hash("a\\ud800", 1), lambda: bucket("a\\ud800", 1)):
    try:
        call()
    except UnicodeEncodeError:
        pass
    else:
        raise SystemExit("a key with a lone surrogate was hashed")
snap = build_snapshot(snapshot_doc(flag("f", condition(partitions={"on": 50, "off": 50}))))
print(snap.evaluate("a\\ud800", "f").label)
"""


def test_a_key_with_a_lone_surrogate_is_refused_by_the_hash_not_a_crash() -> None:
    """JSON carries lone surrogates ("\\ud800") and a caller's str may hold one: mmh3.hash
    over such a str killed the process (SIGSEGV), which a subprocess can show."""
    done = subprocess.run(
        [sys.executable, "-c", LONE_SURROGATE_PROGRAM], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.strip() == "exception"
