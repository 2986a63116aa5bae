"""Snapshots from the store over a real Sync stream: every version offered, signed when the
control plane has a key; the fleet view shows each sidecar's ACK, or its NACK and errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import Address
from sidecar.controlplane.apiclient import ApiClient
from sidecar.controlplane.documents import parse_document
from sidecar.controlplane.main import ControlPlane, http_router
from sidecar.controlplane.release import ReleaseControl, ReleaseSettings
from sidecar.controlplane.web import WebServer
from sidecar.delivery import signing
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.keys import keygen
from sidecar.plumbing.backoff import Backoff
from sidecar.sources.controlplane import ControlPlaneSource, Identity
from tests.fader.rules.builders import condition, flag
from tests.waiting import wait_for

FAST = Backoff(initial=0.05, maximum=0.2)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, signing.Verifier]:
    private, public = keygen(tmp_path / "keys", "cp-2026")
    return private, signing.load_verifier([("cp-2026", public)])


class Running:
    def __init__(self, settings: ReleaseSettings) -> None:
        self.release = ReleaseControl(settings)
        self.plane = ControlPlane(self.release.offers, Address("127.0.0.1", 0))
        self.release.start()
        self.plane.start()
        self.web = WebServer(Address("127.0.0.1", 0), http_router(self.plane, None), None)
        self.web.start()
        self.sources: list[ControlPlaneSource] = []

    def sidecar(self, name: str, verifier: signing.Verifier | None) -> Store:
        store = Store()
        source = ControlPlaneSource(
            f"127.0.0.1:{self.plane.port}",
            Applier(store, verifier=verifier),
            Identity(name),
            backoff=FAST,
        )
        source.start()
        self.sources.append(source)
        return store

    def sidecars(self) -> dict[str, dict[str, object]]:
        api = ApiClient(f"http://127.0.0.1:{self.web.address.port}")
        return {s["identity"]["id"]: s for s in api.get("/api/v1/sidecars")["sidecars"]}

    def close(self) -> None:
        for source in self.sources:
            source.stop()
        self.web.stop()
        self.plane.stop(0)
        self.release.stop()


@pytest.fixture
def running(tmp_path: Path, keys: tuple[Path, signing.Verifier]) -> Iterator[Running]:
    settings = ReleaseSettings(
        data_dir=tmp_path / "data", signing_key=keys[0], signing_key_id="cp-2026"
    )
    plane = Running(settings)
    yield plane
    plane.close()


def test_every_version_reaches_a_sidecar_that_requires_signatures(
    running: Running, keys: tuple[Path, signing.Verifier]
) -> None:
    store = running.sidecar("strict", keys[1])
    released = flag("f", condition(partitions={"on": 0, "off": 100}))
    running.release.store.apply([parse_document(released)], author="a", reason="r")
    wait_for(lambda: store.current is not None and store.current.version == 1, what="v1")
    running.release.store.dial("f", 100, author="a", reason="r")
    wait_for(lambda: store.current is not None and store.current.version == 2, what="v2")
    assert store.current is not None and store.current.evaluate("k", "f").treatment == "on"
    offer = running.plane.offers.current
    assert offer is not None and offer.signature is not None
    document = signing.parse_document(offer.signature)
    assert (document.key_id, document.version) == ("cp-2026", 2)
    wait_for(lambda: running.sidecars()["strict"].get("acked_version") == 2, what="ACK 2")


def test_an_unsigned_store_is_nacked_and_the_fleet_shows_why(
    tmp_path: Path, keys: tuple[Path, signing.Verifier]
) -> None:
    plane = Running(ReleaseSettings(data_dir=tmp_path / "unsigned"))
    try:
        strict = plane.sidecar("strict", keys[1])
        relaxed = plane.sidecar("relaxed", None)
        plane.release.store.apply([parse_document(flag("f"))], author="a", reason="r")
        wait_for(lambda: relaxed.current is not None, what="the relaxed sidecar applies v1")
        wait_for(lambda: "nacked_version" in plane.sidecars()["strict"], what="NACK")
        record = plane.sidecars()["strict"]
        assert record["nacked_version"] == 1 and "acked_version" not in record
        errors = record["nack_errors"]
        assert isinstance(errors, list) and any("unsigned" in str(e) for e in errors)
        assert strict.current is None
        assert plane.sidecars()["relaxed"]["acked_version"] == 1
    finally:
        plane.close()
