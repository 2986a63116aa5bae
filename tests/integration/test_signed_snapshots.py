"""Signed snapshots with real `fader serve` processes: from the watched file, the cache, direct
push and the control-plane stream, tampered, unsigned, expired, replayed and wrong-key
snapshots are refused and counted, and the old snapshot keeps serving."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fader.snapshot.loader import load_bytes

from sidecar.app.sources import SnapshotSources
from sidecar.config import Address, Settings
from sidecar.controlplane.main import ControlPlane
from sidecar.controlplane.offer import OfferSource
from sidecar.delivery import cache, signing
from sidecar.delivery.apply import Applier
from sidecar.delivery.store import Store
from sidecar.keys import keygen, sign_main
from sidecar.push import push_main
from tests.integration.harness import (
    ServeProcess,
    http_get,
    sc_mgmt,
    short_tmp,
    start_sidecar,
    treatment,
    write_snapshot,
)
from tests.waiting import wait_for


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


@pytest.fixture
def keys(tmp: Path) -> tuple[Path, Path]:
    """(private key of the trusted "k1", the directory of trusted public keys)."""
    private, _ = keygen(tmp / "keys", "k1")
    shutil.move(private, tmp / "k1.key")  # the sidecar sees only public keys
    keygen(tmp / "evil", "evil")
    return tmp / "k1.key", tmp / "keys"


def sign(path: Path, key: Path, key_id: str = "k1", expires: str = "1h") -> None:
    assert sign_main(["--key", str(key), "--key-id", key_id, "--expires", expires, str(path)]) == 0


def sign_expired(path: Path, key: Path, version: int) -> None:
    private = signing.load_private_key(key)
    document = signing.sign(path.read_bytes(), version, private, "k1", int(time.time()) - 10)
    signing.signature_path(path).write_bytes(document.to_bytes())


def status(sc: ServeProcess) -> dict[str, Any]:
    return dict(json.loads(http_get(sc_mgmt(sc) + "/status")[1]))


def refusal_metric(sc: ServeProcess, reason: str) -> float:
    text = http_get(sc_mgmt(sc) + "/metrics")[1]
    match = re.search(rf'fader_snapshot_refusals_total{{reason="{reason}"}} (\S+)', text)
    return float(match.group(1)) if match else -1.0


def test_file_and_cache(tmp: Path, keys: tuple[Path, Path]) -> None:
    key, trusted = keys
    snap, cache_dir = tmp / "snap.json", tmp / "cache"
    args = ["--snapshot", str(snap), "--trusted-keys", str(trusted), "--cache-dir", str(cache_dir)]
    write_snapshot(snap, 1)
    sign(snap, key)
    with start_sidecar(args, tmp, "a.log") as sc:
        target = sc.wait_listening()["grpc"]
        assert treatment(target) == "v1"
        assert status(sc)["signing"] == {"required": True, "trusted_key_ids": ["k1"]}

        def refused(reason: str, count: float = 1) -> bool:
            return refusal_metric(sc, reason) == count

        sig = signing.signature_path(snap)
        old_signature = sig.read_bytes()
        write_snapshot(snap, 2)  # new content, the v1 signature still beside it: tampered
        wait_for(lambda: refused("bad_signature"), what="tampered refused")
        sig.unlink()
        wait_for(lambda: refused("unsigned"), what="unsigned refused")
        sign(snap, tmp / "evil" / "evil.key", key_id="evil")
        wait_for(lambda: refused("unknown_key"), what="wrong key refused")
        sign_expired(snap, key, 2)
        wait_for(lambda: refused("expired"), what="expired refused")
        assert treatment(target) == "v1"
        assert "refused snapshot" in sc.log and "still serving version 1" in sc.log
        sign(snap, key)
        wait_for(lambda: treatment(target) == "v2", what="v2 signed and served")

        write_snapshot(snap, 1)  # replay: the old file with its valid old signature
        sig.write_bytes(old_signature)
        wait_for(lambda: refused("stale"), what="replay refused")
        assert treatment(target) == "v2"
        assert status(sc)["last_refusal"]["reason"] == "stale"

    # Restart with the old (validly signed) v1 file: the cache has v2, no rollback.
    with start_sidecar(args, tmp, "b.log") as sc:
        target = sc.wait_listening()["grpc"]
        assert treatment(target) == "v2"
        assert status(sc)["source"].startswith("cache:")
        assert refusal_metric(sc, "stale") == 1

    # An unsigned snapshot planted in the cache is refused; the signed file serves.
    planted = tmp / "planted.json"
    write_snapshot(planted, 9)
    assert (
        Applier(Store(), cache_dir=cache_dir).apply_bytes(planted.read_bytes(), "json", "x").applied
    )
    with start_sidecar(args, tmp, "c.log") as sc:
        target = sc.wait_listening()["grpc"]
        assert treatment(target) == "v1"
        assert refusal_metric(sc, "unsigned") == 1
        assert "unsigned snapshot" in sc.log


def test_demo_with_trusted_keys_is_a_startup_error(tmp: Path, keys: tuple[Path, Path]) -> None:
    with start_sidecar(["--demo", "--trusted-keys", str(keys[1])], tmp, "d.log") as sc:
        assert sc.wait(20) == 2
        assert "the embedded demo is not signed" in sc.log


def push(snap: Path, admin: str, *extra: str) -> int:
    return push_main(["--target", admin, *extra, str(snap)])


def test_push(tmp: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    key, trusted = keys
    served, offered = tmp / "served.json", tmp / "offered.json"
    write_snapshot(served, 1)
    sign(served, key)
    args = [
        "--snapshot", str(served), "--trusted-keys", f"k1={trusted / 'k1.pub'}",
        "--admin-listen", "127.0.0.1:0",
    ]  # fmt: skip
    with start_sidecar(args, tmp, "p.log") as sc:
        target = sc.wait_listening()["grpc"]
        match = re.search(r"admin API \(PushSnapshot\) on (\S+)", sc.log)
        assert match, sc.log
        admin = match.group(1)
        write_snapshot(offered, 2)
        capsys.readouterr()
        assert push(offered, admin) == 1
        assert "unsigned snapshot" in capsys.readouterr().err
        sign(offered, tmp / "evil" / "evil.key", key_id="k1")  # wrong key under a trusted id
        assert push(offered, admin) == 1
        assert "bad signature" in capsys.readouterr().err
        sign_expired(offered, key, 2)
        assert push(offered, admin) == 1
        assert "expired" in capsys.readouterr().err
        sign(offered, key)
        good_signature = signing.signature_path(offered).read_bytes()
        write_snapshot(offered, 2, defaultTreatment="tampered")
        assert push(offered, admin) == 1
        assert "tampered" in capsys.readouterr().err
        assert treatment(target) == "v1"
        write_snapshot(offered, 2)
        signing.signature_path(offered).write_bytes(good_signature)
        assert push(offered, admin) == 0
        assert treatment(target) == "v2"
        assert push(served, admin, "--force") == 1  # replay of v1, even forced
        assert "replayed" in capsys.readouterr().err
        assert treatment(target) == "v2"
        for reason in ("unsigned", "bad_signature", "expired", "stale"):
            expected = 2 if reason == "bad_signature" else 1
            assert refusal_metric(sc, reason) == expected, reason


def test_control_plane_stream(tmp: Path, keys: tuple[Path, Path]) -> None:
    key, trusted = keys
    snap = tmp / "offer.json"
    write_snapshot(snap, 1)
    sign(snap, key)
    offers = OfferSource(snap)
    plane = ControlPlane(offers, Address("127.0.0.1", 0))
    plane.start()
    args = [
        "--control-plane", f"127.0.0.1:{plane.port}", "--trusted-keys", str(trusted),
        "--sidecar-id", "pod-s",
    ]  # fmt: skip

    def record() -> dict[str, Any]:
        sidecars = plane.status().get("sidecars", [])
        return dict(sidecars[0]) if sidecars else {}

    def nacked(text: str) -> bool:
        item = record()
        return item.get("nacked_version") == 2 and any(text in e for e in item["nack_errors"])

    try:
        with start_sidecar(args, tmp, "s.log") as sc:
            target = sc.wait_listening()["grpc"]
            wait_for(lambda: treatment(target) == "v1", what="v1 over the stream")
            sig = signing.signature_path(snap)
            sig.unlink()
            write_snapshot(snap, 2)
            offers.refresh()
            wait_for(lambda: nacked("unsigned"), what="NACK unsigned")
            sign(snap, tmp / "evil" / "evil.key", key_id="evil")
            offers.refresh()
            wait_for(lambda: nacked("unknown key id 'evil'"), what="NACK unknown key")
            sign_expired(snap, key, 2)
            offers.refresh()
            wait_for(lambda: nacked("expired"), what="NACK expired")
            assert treatment(target) == "v1" and record()["acked_version"] == 1
            sign(snap, key)
            offers.refresh()
            wait_for(lambda: treatment(target) == "v2", what="v2 signed over the stream")
            write_snapshot(snap, 1)  # replay of a validly signed older snapshot
            sign(snap, key)
            offers.refresh()
            wait_for(
                lambda: (
                    record().get("nacked_version") == 1
                    and any("replayed" in e for e in record()["nack_errors"])
                ),
                what="NACK replay",
            )
            write_snapshot(snap, 3, defaultTreatment="tampered")
            sign(snap, key)
            write_snapshot(snap, 3)  # signed content then changed: tampered
            offers.refresh()
            wait_for(
                lambda: (
                    record().get("nacked_version") == 3
                    and any("bad signature" in e for e in record()["nack_errors"])
                ),
                what="NACK tampered",
            )
            assert treatment(target) == "v2"
    finally:
        plane.stop(0)


@pytest.mark.parametrize("case", ["tampered", "unsigned", "expired", "wrong key", "mismatch"])
def test_cache_refusals(tmp: Path, keys: tuple[Path, Path], case: str) -> None:
    """Whoever can write --cache-dir can rewrite the envelope, checksum included: the
    signature is what the cached snapshot is judged by."""
    key, trusted = keys
    snap = tmp / "snap.json"
    write_snapshot(snap, 5)
    sign(snap, key)
    if case == "tampered":
        write_snapshot(snap, 5, defaultTreatment="evil")
    elif case == "unsigned":
        signing.signature_path(snap).unlink()
    elif case == "expired":
        sign_expired(snap, key, 5)
    elif case == "wrong key":
        sign(snap, tmp / "evil" / "evil.key", key_id="k1")
    else:
        write_snapshot(snap, 6)  # a valid v5 signature on a v6 snapshot
        document = signing.sign(snap.read_bytes(), 5, signing.load_private_key(key), "k1", 2**40)
        signing.signature_path(snap).write_bytes(document.to_bytes())
    payload = snap.read_bytes()
    signature = signing.signature_path(snap)
    cache_dir = tmp / "cache"
    cache.save(
        cache_dir,
        load_bytes(payload, "json", "attacker"),
        "json",
        payload,
        signature.read_bytes() if signature.exists() else None,
    )
    settings = Settings(cache_dir=cache_dir, trusted_keys=((None, trusted),))
    sources = SnapshotSources(settings, Store())
    sources.load_initial()
    reason = {
        "tampered": "bad_signature",
        "unsigned": "unsigned",
        "expired": "expired",
        "wrong key": "bad_signature",
        "mismatch": "version_mismatch",
    }[case]
    assert sources.store.current is None
    assert sources.refusals == {reason: 1}
    assert sources.status()["last_refusal"]["source"].startswith(f"cache:{cache_dir}")
