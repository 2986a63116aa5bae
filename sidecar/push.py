"""`fader push --target ADDR FILE`: offer one snapshot to a sidecar's admin listener."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from fader._gen.fader.v1 import controlplane_pb2, controlplane_pb2_grpc

from sidecar.snapshot.codec import decode, format_for, normalize
from sidecar.snapshot.issues import SnapshotError
from sidecar.snapshot.wire import to_message


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
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        data = args.file.read_bytes()
        fmt = format_for(args.file)
        version = normalize(decode(data, fmt)).version
    except OSError as exc:
        print(f"fader push: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except SnapshotError as exc:
        print(f"fader push: {args.file}: {exc}", file=sys.stderr)
        return 2
    secret = args.token_file.read_text().strip() if args.token_file else args.token
    metadata = [("authorization", f"Bearer {secret}")] if secret else None
    request = controlplane_pb2.PushSnapshotRequest(
        snapshot=to_message(data, fmt, version), force=args.force
    )
    with grpc.insecure_channel(args.target) as channel:
        stub = controlplane_pb2_grpc.SnapshotAdminServiceStub(channel)
        try:
            ack = stub.PushSnapshot(request, metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"fader push: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if ack.accepted:
        print(f"applied version {ack.version}")
        return 0
    print(f"refused version {ack.version}:", file=sys.stderr)
    for error in ack.errors:
        print(f"  - {error}", file=sys.stderr)
    return 1
