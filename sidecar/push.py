"""`fader push --target ADDR FILE`: offer one snapshot to a sidecar's admin listener.

The detached signature ``FILE.sig`` (``fader sign``) is sent along when it exists, and TLS
(``--ca``, with ``--cert``/``--key`` for mTLS) is used when asked for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from fader.pb.fader.v1 import controlplane_pb2, controlplane_pb2_grpc
from fader.snapshot.codec import decode, format_for, normalize
from fader.snapshot.issues import SnapshotError

from sidecar.delivery.messages import to_message
from sidecar.delivery.signing import signature_path
from sidecar.plumbing.channels import ChannelSecurity


def push_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fader push",
        description="Push a snapshot to a sidecar's admin listener (fader serve --admin-listen). "
        "Exit 0 when the sidecar applied it, 1 when it refused it (its errors are printed).",
    )
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--target", required=True, metavar="ADDR", help="HOST:PORT or unix:///path")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token (prefer --token-file: argv is visible to ps)")
    token.add_argument("--token-file", type=Path)
    parser.add_argument("--force", action="store_true", help="apply even if not newer (rollback)")
    parser.add_argument(
        "--signature", type=Path, metavar="SIG", help="detached signature (default FILE.sig if any)"
    )
    parser.add_argument("--ca", type=Path, help="use TLS, verifying the sidecar with this CA")
    parser.add_argument("--cert", type=Path, help="client certificate for mTLS (with --key)")
    parser.add_argument("--key", type=Path, help="private key of --cert")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        data = args.file.read_bytes()
        fmt = format_for(args.file)
        version = normalize(decode(data, fmt)).version
        sig_path = args.signature or signature_path(args.file)
        signature = sig_path.read_bytes() if args.signature or sig_path.exists() else None
    except OSError as exc:
        print(f"fader push: {exc.filename or args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except SnapshotError as exc:
        print(f"fader push: {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        security = ChannelSecurity.from_files(
            ca=args.ca, cert=args.cert, key=args.key, token_file=args.token_file, token=args.token
        )
        metadata = security.metadata()
    except OSError as exc:
        print(f"fader push: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:  # TLS options that do not go together
        print(f"fader push: {exc}", file=sys.stderr)
        return 2
    request = controlplane_pb2.PushSnapshotRequest(
        snapshot=to_message(data, fmt, version, signature), force=args.force
    )
    with security.channel(args.target) as channel:
        stub = controlplane_pb2_grpc.SnapshotAdminServiceStub(channel)
        try:
            ack = stub.PushSnapshot(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"fader push: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if ack.accepted:
        print(f"applied version {ack.version}")
        for warning in ack.warnings:
            print(f"  warning: {warning}", file=sys.stderr)
        return 0
    print(f"refused version {ack.version}:", file=sys.stderr)
    for error in ack.errors:
        print(f"  - {error}", file=sys.stderr)
    return 1
