"""The disk spool: order across restarts, size limit, corrupt files set aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.telemetry.batches import Batch, BatchBuilder
from sidecar.telemetry.impressions import Impression
from sidecar.telemetry.spool import Spool, SpoolFull


def batch(name: str) -> Batch:
    builder = BatchBuilder(10, 1 << 20)
    builder.add_impressions([Impression(name, None, "f", "on", "r", 1, 2, None, 3)])
    builder.seal()
    sealed = builder.sealed[0]
    sealed.id = name
    return sealed


def test_fifo_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    assert spool.open() == 0
    for name in ("a", "b", "c"):
        spool.append(batch(name))
    head = spool.head()
    assert head is not None and head[1].id == "a"
    spool.remove(head[0])
    (tmp_path / ".tmp-leftover").write_bytes(b"half")
    reopened = Spool(tmp_path, 1 << 20)
    assert reopened.open() == 2
    assert not (tmp_path / ".tmp-leftover").exists()
    reopened.append(batch("d"))
    seen = []
    while (head := reopened.head()) is not None:
        seen.append(head[1].id)
        reopened.remove(head[0])
    assert seen == ["b", "c", "d"]
    assert reopened.bytes == 0 and list(tmp_path.iterdir()) == []


def test_size_limit_refuses_without_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 300)
    spool.open()
    spool.append(batch("a"))
    size = spool.bytes
    with pytest.raises(SpoolFull):
        for name in "bcdefgh":
            spool.append(batch(name))
    assert spool.bytes <= 300
    assert len(list(tmp_path.glob("*.batch"))) == len(spool) and spool.bytes >= size


def test_corrupt_file_is_set_aside_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.open()
    spool.append(batch("a"))
    spool.append(batch("b"))
    first = sorted(tmp_path.glob("*.batch"))[0]
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF
    first.write_bytes(bytes(data))
    head = spool.head()
    assert head is not None and head[1].id == "b"
    assert spool.corrupt == 1
    assert first.with_suffix(".corrupt").exists()


def test_remove_must_be_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.open()
    spool.append(batch("a"))
    spool.append(batch("b"))
    with pytest.raises(ValueError, match="oldest batch is 0"):
        spool.remove(1)
