"""`fader keygen` and `fader sign`: make an Ed25519 signing key pair, sign a snapshot file.

The private key never needs to be near a sidecar: sign where snapshots are published (CI,
the control plane's host), give sidecars only the public key (`--trusted-keys`).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fader.snapshot.codec import decode, format_for, normalize
from fader.snapshot.issues import SnapshotError

from sidecar.cli import EXIT_INVALID, add_limit_options, limits_from, validate_bytes
from sidecar.delivery import signing
from sidecar.delivery.signing import KeyFileError

DEFAULT_EXPIRES = "30d"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def keygen_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fader keygen",
        description="Write a new Ed25519 key pair: DIR/ID.key (private, mode 0600) and "
        "DIR/ID.pub (public, for the sidecars' --trusted-keys).",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")
    parser.add_argument("--key-id", default="fader", metavar="ID", help="default %(default)s")
    args = parser.parse_args(argv)
    try:
        signing.check_key_id(args.key_id)
        private_path, public_path = keygen(args.out, args.key_id)
    except FileExistsError as exc:
        print(
            f"fader keygen: {exc.filename} already exists (a key is never overwritten: give "
            "another --key-id or --out)",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"fader keygen: {exc.filename or args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"fader keygen: {exc}", file=sys.stderr)
        return 2
    print(f"private key: {private_path} (keep it secret)\npublic key:  {public_path}")
    return 0


def keygen(directory: Path, key_id: str) -> tuple[Path, Path]:
    """Create ``ID.key`` (0600, never overwritten) and ``ID.pub`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_path = directory / (key_id + signing.PRIVATE_SUFFIX)
    public_path = directory / (key_id + signing.PUBLIC_SUFFIX)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: an existing key is never replaced by accident; 0600 from the first byte.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def sign_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fader sign",
        description="Sign a snapshot file: writes the detached signature FILE.sig (or --out). "
        "The file is validated first, as `fader validate` does: an invalid snapshot is not "
        "signed (exit 1).",
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--key", required=True, type=Path, metavar="PRIV", help="ID.key file")
    parser.add_argument("--key-id", required=True, metavar="ID", help="as trusted by sidecars")
    parser.add_argument(
        "--expires",
        default=DEFAULT_EXPIRES,
        help="how long the signature is valid: 90s, 15m, 12h, 30d, or an ISO-8601 time with "
        "a zone (default %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="where to write the signature (default FILE.sig)")
    add_limit_options(parser)
    args = parser.parse_args(argv)
    try:
        expires = parse_expires(args.expires, time.time())
        data = args.file.read_bytes()
        fmt = format_for(args.file)
        # validate's own report on stderr; its "valid: ..." line is not sign's to print
        if validate_bytes(str(args.file), data, fmt, limits_from(args), io.StringIO(), sys.stderr):
            print(f"fader sign: {args.file} is not a valid snapshot: not signed", file=sys.stderr)
            return EXIT_INVALID
        version = normalize(decode(data, fmt)).version
        key = signing.load_private_key(args.key)
        document = signing.sign(data, version, key, args.key_id, expires)
        out = args.out or signing.signature_path(args.file)
        out.write_bytes(document.to_bytes())
    except OSError as exc:
        print(f"fader sign: {exc.filename or args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except (SnapshotError, KeyFileError, ValueError) as exc:
        print(f"fader sign: {exc}", file=sys.stderr)
        return 2
    print(f"signed version {version} with key {args.key_id} until {_utc(expires)}: {out}")
    return 0


def parse_expires(text: str, now: float) -> int:
    """Unix seconds from a duration (``30d``) or an ISO-8601 time with a zone."""
    match = _DURATION.match(text.strip())
    if match:
        return int(now) + int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--expires {text!r}: not a duration (30d) nor an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"--expires {text!r}: give a zone (e.g. Z or +00:00)")
    expires = int(moment.timestamp())
    if expires <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return expires


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
