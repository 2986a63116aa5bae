"""Signed snapshots: the signature document, verification, and the Applier refusing every
unsigned, tampered, wrongly signed, expired, mismatched or replayed snapshot, whatever the
source (applied bytes, the file source with FILE.sig, the re-verified cache)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sidecar.delivery import cache, signing
from sidecar.delivery.apply import Applier, Outcome
from sidecar.delivery.signing import SignatureError, Verifier
from sidecar.delivery.store import Store
from sidecar.keys import keygen, parse_expires
from sidecar.sources.file import FileSource
from tests.fader.rules.builders import flag, snapshot_doc

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
HOUR = 3600


def snapshot_bytes(version: int, treatment: str = "on") -> bytes:
    return json.dumps(snapshot_doc(flag("f", defaultTreatment=treatment), version=version)).encode()


def signed(
    data: bytes,
    version: int,
    key: Ed25519PrivateKey = KEY,
    key_id: str = "k1",
    expires: int | None = None,
) -> bytes:
    expiry = int(time.time()) + HOUR if expires is None else expires
    return signing.sign(data, version, key, key_id, expiry).to_bytes()


def verifier() -> Verifier:
    return Verifier({"k1": KEY.public_key()})


def test_document_round_trip_and_header_binding() -> None:
    data = snapshot_bytes(3)
    raw = signed(data, 3)
    document = signing.parse_document(raw)
    assert (document.key_id, document.version) == ("k1", 3)
    message = signing.signed_message("k1", 3, document.expires, document.sha256)
    assert message.startswith(b"fader-snapshot-signature/v1\nkey_id=k1\nversion=3\n")
    assert verifier().verify(data, raw).version == 3


def _reason(data: bytes, raw: bytes | None, now: float | None = None) -> str:
    with pytest.raises(SignatureError) as caught:
        verifier().verify(data, raw, now)
    return caught.value.reason


def test_each_failure_has_its_reason() -> None:
    data = snapshot_bytes(3)
    good = json.loads(signed(data, 3))
    assert _reason(data, None) == "unsigned"
    assert _reason(data, b"") == "unsigned"
    assert _reason(data, b"{not json") == "bad_signature_document"
    assert _reason(data, json.dumps({**good, "alg": "rsa"}).encode()) == "bad_signature_document"
    assert _reason(snapshot_bytes(3, "off"), signed(data, 3)) == "bad_signature"  # tampered
    assert _reason(data, signed(data, 3, key=OTHER)) == "bad_signature"  # wrong key, same id
    assert _reason(data, signed(data, 3, key=OTHER, key_id="k2")) == "unknown_key"
    # the version and expiry in the document are covered by the signature
    assert _reason(data, json.dumps({**good, "version": 4}).encode()) == "bad_signature"
    assert _reason(data, json.dumps({**good, "expires": 2**40}).encode()) == "bad_signature"
    assert _reason(data, signed(data, 3, expires=int(time.time()) - 1)) == "expired"
    assert _reason(data, signed(data, 3), now=time.time() + 2 * HOUR) == "expired"


def _applier(tmp_path: Path | None = None) -> tuple[Applier, list[Outcome]]:
    refused: list[Outcome] = []
    applier = Applier(Store(), cache_dir=tmp_path, on_refused=[refused.append], verifier=verifier())
    return applier, refused


def test_applier_refuses_and_keeps_serving() -> None:
    applier, refused = _applier()
    v2 = snapshot_bytes(2)
    assert applier.apply_bytes(v2, "json", "t", signature=signed(v2, 2)).applied
    v3 = snapshot_bytes(3)
    cases = {
        "unsigned": (v3, None),
        "bad_signature": (snapshot_bytes(3, "off"), signed(v3, 3)),
        "unknown_key": (v3, signed(v3, 3, key=OTHER, key_id="k9")),
        "expired": (v3, signed(v3, 3, expires=int(time.time()) - 5)),
        "version_mismatch": (v3, signed(v3, 7)),
    }
    for reason, (data, signature) in cases.items():
        outcome = applier.apply_bytes(data, "json", "t", signature=signature)
        assert (outcome.applied, outcome.reason) == (False, reason)
        assert outcome.errors[0].path == "$signature"
    # replay: an older, validly signed snapshot, even forced
    v1 = snapshot_bytes(1)
    replay = applier.apply_bytes(v1, "json", "t", signature=signed(v1, 1), force=True)
    assert (replay.applied, replay.reason) == (False, "stale")
    assert "replayed or stale signed snapshot" in str(replay.errors[0])
    assert [o.reason for o in refused] == [*cases, "stale"]
    assert applier.store.current is not None and applier.store.current.version == 2
    assert applier.apply_bytes(v3, "json", "t", signature=signed(v3, 3)).applied


def test_unsigned_nack_costs_no_decode() -> None:
    """A refused signature is decided before decoding: garbage bytes get the signature reason."""
    applier, _ = _applier()
    outcome = applier.apply_bytes(b"\xff" * 100, "json", "t", signature=None)
    assert outcome.reason == "unsigned"


def test_cache_keeps_signature_and_is_reverified(tmp_path: Path) -> None:
    applier, _ = _applier(tmp_path)
    data = snapshot_bytes(5)
    assert applier.apply_bytes(data, "json", "t", signature=signed(data, 5)).applied
    cached = cache.read(tmp_path)
    assert cached is not None and cached.signature is not None
    fresh, _ = _applier()
    outcome = fresh.apply_bytes(
        cached.payload, cached.encoding, cached.source, signature=cached.signature, persist=False
    )
    assert outcome.applied and outcome.version == 5
    # An unsigned snapshot planted in the cache directory is refused.
    unsigned_store = Store()
    planted = Applier(unsigned_store, cache_dir=tmp_path)
    assert planted.apply_bytes(snapshot_bytes(9), "json", "attacker").applied
    cached = cache.read(tmp_path)
    assert cached is not None and cached.signature is None
    outcome = fresh.apply_bytes(cached.payload, cached.encoding, cached.source, persist=False)
    assert (outcome.applied, outcome.reason) == (False, "unsigned")
    assert fresh.store.current is not None and fresh.store.current.version == 5


def test_file_source_reads_the_signature_beside(tmp_path: Path) -> None:
    path = tmp_path / "snap.json"
    applier, refused = _applier()
    source = FileSource(path, applier, settle_seconds=0.001, force_polling=True)
    path.write_bytes(snapshot_bytes(1))
    assert source.load() == refused[-1] and refused[-1].reason == "unsigned"
    signing.signature_path(path).write_bytes(signed(snapshot_bytes(1), 1))
    outcome = source.load()  # only the signature changed: a new offer
    assert outcome is not None and outcome.applied
    path.write_bytes(snapshot_bytes(2))  # new content, old signature
    outcome = source.load()
    assert outcome is not None and outcome.reason == "bad_signature"
    assert applier.store.current is not None and applier.store.current.version == 1


def test_keygen_and_load_verifier(tmp_path: Path) -> None:
    private, public = keygen(tmp_path, "team-a")
    assert private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        keygen(tmp_path, "team-a")
    key = signing.load_private_key(private)
    data = snapshot_bytes(1)
    raw = signing.sign(data, 1, key, "team-a", int(time.time()) + 60).to_bytes()
    for entries in ([(None, tmp_path)], [("team-a", public)]):
        assert signing.load_verifier(entries).verify(data, raw).key_id == "team-a"
    with pytest.raises(signing.KeyFileError):
        signing.load_verifier([("x", private)])  # a private key is not a public key
    with pytest.raises(signing.KeyFileError):
        signing.load_verifier([(None, tmp_path / "missing")])
    with pytest.raises(signing.KeyFileError):
        signing.check_key_id("bad\nid")
    with pytest.raises(signing.KeyFileError):
        signing.check_key_id("trailing\n")


def test_parse_expires() -> None:
    assert parse_expires("30d", 1000.0) == 1000 + 30 * 86400
    assert parse_expires("90s", 1000.0) == 1090
    assert parse_expires("2030-01-01T00:00:00Z", 1000.0) == 1893456000
    for bad in ("soon", "2030-01-01T00:00:00", "2000-01-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_expires(bad, time.time())
