"""Detached Ed25519 signatures over snapshot bytes: the signature document, signing, verifying.

Whoever can put a snapshot in front of a sidecar decides what code paths every user runs, so
a sidecar configured with trusted keys refuses any snapshot that is not signed by one of them,
from every source (push, control-plane stream, file, its own cache). This follows OPA's bundle
signing and the lesson of its advisory GHSA-g2pf-6v5v-qcc8: "signing configured" is a single
switch (a ``Verifier`` exists) and, once on, a signature is always required.

What is signed are the exact bytes distributed, never a re-encoding, so there is no
canonicalisation to get wrong. The signature covers a domain-separated header that binds the
key id, the snapshot's version, the expiry and the SHA-256 of those bytes::

    fader-snapshot-signature/v1
    key_id=<key id>
    version=<snapshot version>
    expires=<unix seconds>
    sha256=<hex digest of the snapshot bytes>

The detached signature document (``FILE.sig`` beside a file, a field of the wire message, an
entry of the cache envelope) is a small JSON object::

    {"format": "fader-signature/1", "alg": "ed25519", "key_id": "prod-2026",
     "version": 42, "expires": 1798761600, "sha256": "<hex>", "signature": "<base64>"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds

# cryptography is imported where keys are loaded or used: a sidecar without --trusted-keys
# never needs it, and importing it costs ~6.5 MiB of RSS (tools/demo_rss.py).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

FORMAT: Final = "fader-signature/1"
ALGORITHM: Final = "ed25519"
DOMAIN: Final = b"fader-snapshot-signature/v1\n"
SIGNATURE_SUFFIX: Final = ".sig"
PUBLIC_SUFFIX: Final = ".pub"
PRIVATE_SUFFIX: Final = ".key"
# A signature document is a few hundred bytes; anything far larger is not one.
MAX_SIGNATURE_BYTES: Final = 4096
# Key ids go into the signed header verbatim, so they may not contain separators.
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Refusal reasons, as counted in fader_snapshot_refusals{reason}.
UNSIGNED: Final = "unsigned"
MALFORMED: Final = "bad_signature_document"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
EXPIRED: Final = "expired"
VERSION_MISMATCH: Final = "version_mismatch"
REASONS: Final = (UNSIGNED, MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE, EXPIRED, VERSION_MISMATCH)


class SignatureError(ValueError):
    """A snapshot refused for its signature; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyFileError(ValueError):
    """A key file or a --trusted-keys entry that cannot be used (a startup error)."""


@dataclass(frozen=True, slots=True)
class SignatureDocument:
    key_id: str
    version: int
    expires: int
    sha256: str
    signature: bytes

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "alg": ALGORITHM,
            "key_id": self.key_id,
            "version": self.version,
            "expires": self.expires,
            "sha256": self.sha256,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return (json.dumps(document, indent=2) + "\n").encode()


def signed_message(key_id: str, version: int, expires: int, sha256_hex: str) -> bytes:
    """The exact bytes an Ed25519 signature covers (see the module docstring)."""
    header = f"key_id={key_id}\nversion={version}\nexpires={expires}\nsha256={sha256_hex}\n"
    return DOMAIN + header.encode("ascii")


def sign(
    data: bytes, version: int, key: Ed25519PrivateKey, key_id: str, expires: int
) -> SignatureDocument:
    """Sign snapshot ``data`` (whose document says ``version``) until ``expires`` (unix s)."""
    check_key_id(key_id)
    if version < 0 or expires <= 0:
        raise ValueError("version must be >= 0 and expires a positive unix time")
    digest = hashlib.sha256(data).hexdigest()
    signature = key.sign(signed_message(key_id, version, expires, digest))
    return SignatureDocument(key_id, version, expires, digest, signature)


def parse_document(raw: bytes) -> SignatureDocument:
    """The signature document in ``raw``; SignatureError(MALFORMED) saying what is wrong."""
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise SignatureError(MALFORMED, f"signature document larger than {MAX_SIGNATURE_BYTES} B")
    if json_depth_exceeds(raw):
        raise SignatureError(MALFORMED, f"signature document nests more than {MAX_DEPTH} levels")
    try:
        document: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(MALFORMED, f"signature document is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SignatureError(MALFORMED, "signature document must be a JSON object")
    if document.get("format") != FORMAT or document.get("alg") != ALGORITHM:
        raise SignatureError(
            MALFORMED, f"signature document must have format {FORMAT!r} and alg {ALGORITHM!r}"
        )
    key_id, signature = document.get("key_id"), document.get("signature")
    version, expires, digest = (
        document.get("version"),
        document.get("expires"),
        document.get("sha256"),
    )
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise SignatureError(MALFORMED, "signature document: key_id missing or malformed")
    for name, value in (("version", version), ("expires", expires)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SignatureError(MALFORMED, f"signature document: {name} must be an integer >= 0")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SignatureError(MALFORMED, "signature document: sha256 must be 64 hex digits")
    try:
        raw_signature = base64.b64decode(str(signature), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(MALFORMED, "signature document: signature is not base64") from None
    if len(raw_signature) != 64:
        raise SignatureError(MALFORMED, "signature document: an ed25519 signature is 64 bytes")
    assert isinstance(version, int) and isinstance(expires, int)
    return SignatureDocument(key_id, version, expires, digest, raw_signature)


@dataclass(frozen=True, slots=True)
class Verified:
    """A signature that checked out: the version it vouches for, and by which key."""

    key_id: str
    version: int
    expires: int


class Verifier:
    """The trusted public keys; its existence means every snapshot must be signed."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        if not keys:
            raise KeyFileError("signing is configured but no trusted key was given")
        self._keys = dict(keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def verify(
        self, data: bytes, raw_signature: bytes | None, now: float | None = None
    ) -> Verified:
        """Check the detached signature of ``data``; raises SignatureError with a reason.

        The caller still has to compare ``Verified.version`` with the decoded document's
        version (VERSION_MISMATCH) and with the active one (replay).
        """
        if not raw_signature:
            raise SignatureError(
                UNSIGNED, "unsigned snapshot: this sidecar accepts only signed snapshots"
            )
        document = parse_document(raw_signature)
        key = self._keys.get(document.key_id)
        if key is None:
            raise SignatureError(
                UNKNOWN_KEY, f"signed with unknown key id {document.key_id!r} (not trusted here)"
            )
        digest = hashlib.sha256(data).hexdigest()
        message = signed_message(document.key_id, document.version, document.expires, digest)
        from cryptography.exceptions import InvalidSignature  # loaded with the keys already

        try:
            key.verify(document.signature, message)
        except InvalidSignature:
            what = "the snapshot bytes do not match" if digest != document.sha256 else "forged"
            raise SignatureError(
                BAD_SIGNATURE,
                f"bad signature for key id {document.key_id!r} ({what}): tampered or wrong key",
            ) from None
        current = time.time() if now is None else now
        if document.expires <= current:
            raise SignatureError(
                EXPIRED,
                f"signature expired at {_utc(document.expires)} (version {document.version})",
            )
        return Verified(document.key_id, document.version, document.expires)


def check_version(verified: Verified, document_version: int) -> None:
    """The signed version must be the snapshot's own: a signature is not reusable."""
    if verified.version != document_version:
        raise SignatureError(
            VERSION_MISMATCH,
            f"the signature is for version {verified.version}, "
            f"the snapshot says version {document_version}",
        )


def check_key_id(key_id: str) -> None:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r}: use letters, digits, '.', '_', '-' (at most 64)")


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- keys ----------------------------------------------------------------------------------


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot load the private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def load_verifier(entries: Iterable[tuple[str | None, Path]]) -> Verifier:
    """Keys from ``ID=PATH`` entries and from directories (every ``ID.pub`` in them)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for key_id, path in entries:
        if key_id is None:
            if not path.is_dir():
                raise KeyFileError(f"--trusted-keys {path}: not ID=PATH and not a directory")
            found = sorted(path.glob("*" + PUBLIC_SUFFIX))
            if not found:
                raise KeyFileError(f"--trusted-keys {path}: no *{PUBLIC_SUFFIX} file in it")
            pairs = [(item.name.removesuffix(PUBLIC_SUFFIX), item) for item in found]
        else:
            pairs = [(key_id, path)]
        for pair_id, pair_path in pairs:
            check_key_id(pair_id)
            if pair_id in keys:
                raise KeyFileError(f"--trusted-keys: key id {pair_id!r} given twice")
            keys[pair_id] = load_public_key(pair_path)
    return Verifier(keys)


def signature_path(snapshot_path: Path) -> Path:
    """Where a snapshot file's detached signature lives: ``FILE.sig``."""
    return snapshot_path.with_name(snapshot_path.name + SIGNATURE_SUFFIX)
