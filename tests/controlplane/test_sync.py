"""Control plane <-> sidecar stream with real gRPC on loopback: ACK, NACK, resync, restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import Address
from sidecar.controlplane.main import ControlPlane
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.plumbing.backoff import Backoff
from sidecar.sources.controlplane import ControlPlaneSource, Identity
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.waiting import wait_for

FAST = Backoff(initial=0.05, maximum=0.2)


def _write(path: Path, version: int, treatment: str = "on", **fields: object) -> None:
    doc = snapshot_doc(flag("f", condition(partitions={treatment: 100}), **fields), version=version)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    path = tmp_path / "snapshot.json"
    _write(path, 1)
    return path


@pytest.fixture
def plane(snapshot_file: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(snapshot_file, Address("127.0.0.1", 0))
    cp.start()
    yield cp
    cp.stop(0)


def _sidecar(port: int, store: Store, name: str = "pod-a") -> ControlPlaneSource:
    source = ControlPlaneSource(
        f"127.0.0.1:{port}", Applier(store), Identity(name, {"app": "shop"}), backoff=FAST
    )
    source.start()
    return source


def _acked(cp: ControlPlane, name: str) -> int | None:
    for item in cp.servicer.fleet().sidecars:
        if item.identity.id == name and item.has_acked:
            return item.acked_version
    return None


def test_change_reaches_the_sidecar_and_is_acked(plane: ControlPlane, snapshot_file: Path) -> None:
    store = Store()
    source = _sidecar(plane.port, store)
    try:
        wait_for(lambda: _acked(plane, "pod-a") == 1)
        assert store.current is not None and store.current.source.startswith("controlplane:")
        _write(snapshot_file, 2, "v2")
        wait_for(lambda: _acked(plane, "pod-a") == 2)
        assert store.current is not None and store.current.evaluate("k", "f").treatment == "v2"
        status = plane.status()
        assert status["offered_version"] == 2
        assert status["sidecars"][0]["identity"]["labels"] == {"app": "shop"}
        assert status["sidecars"][0]["connected"] is True
    finally:
        source.stop()


def test_invalid_snapshot_is_nacked_and_old_keeps_serving(
    plane: ControlPlane, snapshot_file: Path
) -> None:
    store = Store()
    source = _sidecar(plane.port, store)
    try:
        wait_for(lambda: _acked(plane, "pod-a") == 1)
        _write(snapshot_file, 2, algo=9)
        wait_for(lambda: any(s.has_nacked for s in plane.servicer.fleet().sidecars))
        status = plane.servicer.fleet().sidecars[0]
        assert status.nacked_version == 2
        assert any("$.flags[0].algo" in e for e in status.nack_errors)
        assert status.acked_version == 1
        assert store.current is not None and store.current.version == 1
    finally:
        source.stop()


def test_sidecar_reconnects_and_resyncs_after_control_plane_restart(
    snapshot_file: Path,
) -> None:
    first = ControlPlane(snapshot_file, Address("127.0.0.1", 0))
    first.start()
    port = first.port
    store = Store()
    source = _sidecar(port, store)
    try:
        wait_for(lambda: _acked(first, "pod-a") == 1)
        first.stop(0)
        wait_for(lambda: not source.connected)
        assert store.current is not None and store.current.version == 1  # keeps serving
        _write(snapshot_file, 2)
        second = ControlPlane(snapshot_file, Address("127.0.0.1", port))
        second.start()
        try:
            wait_for(lambda: _acked(second, "pod-a") == 2)
            assert source.connected and source.reconnects >= 1
        finally:
            second.stop(0)
    finally:
        source.stop()


def test_folder_offers_the_newest_version(tmp_path: Path) -> None:
    folder = tmp_path / "snaps"
    folder.mkdir()
    _write(folder / "a.json", 3)
    _write(folder / "b.json", 7, "seven")
    (folder / "notes.txt").write_text("ignored")
    cp = ControlPlane(folder, Address("127.0.0.1", 0))
    cp.start()
    store = Store()
    source = _sidecar(cp.port, store)
    try:
        wait_for(lambda: _acked(cp, "pod-a") == 7)
        _write(folder / "c.json", 9, "nine")
        wait_for(lambda: _acked(cp, "pod-a") == 9)
    finally:
        source.stop()
        cp.stop(0)
