"""The ``fader`` command: serve, evaluate, validate, push, controlplane, status, flags, rollout,
metrics, guardrails, keygen, sign.

``evaluate`` and ``validate`` are script-facing contracts (README "Snapshots"): one JSON
result line per input line, and exit status 0 only for a valid snapshot.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from fader.snapshot.codec import JSON, MSGPACK, decode, format_for
from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds
from fader.snapshot.issues import SnapshotError
from fader.snapshot.limits import SnapshotLimits
from fader.snapshot.loader import check_document, load_bytes, load_file
from fader.snapshot.snapshot import Snapshot
from fader.snapshot.text import lone_surrogate

from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest
from sidecar.limits import RequestLimits

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
SNAPSHOT_SUFFIXES = (".json", ".msgpack", ".mpk")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fader`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Commands with long option lists own their parsers; imported lazily so that the
    # offline commands start fast and need no gRPC runtime.
    if args and args[0] == "serve":
        from sidecar.app.serve import serve_main

        return serve_main(args[1:])
    if args and args[0] == "controlplane":
        from sidecar.controlplane.main import controlplane_main

        return controlplane_main(args[1:])
    if args and args[0] == "status":
        from sidecar.controlplane.main import status_main

        return status_main(args[1:])
    if args and args[0] in ("flags", "rollout"):
        from sidecar.controlplane.commands import flags_main, rollout_main

        return (flags_main if args[0] == "flags" else rollout_main)(args[1:])
    if args and args[0] in ("metrics", "guardrails"):
        from sidecar.controlplane.guardrail_commands import guardrails_main, metrics_main

        return (metrics_main if args[0] == "metrics" else guardrails_main)(args[1:])
    if args and args[0] == "push":
        from sidecar.push import push_main

        return push_main(args[1:])
    if args and args[0] in ("keygen", "sign"):
        from sidecar.keys import keygen_main, sign_main

        return (keygen_main if args[0] == "keygen" else sign_main)(args[1:])
    parser = _parser()
    ns = parser.parse_args(args)
    if ns.command == "evaluate":
        return evaluate_command(ns.snapshot, sys.stdin, sys.stdout, sys.stderr)
    if ns.command == "validate":
        return validate_command(ns.files, sys.stdout, sys.stderr, limits_from(ns), None, ns.format)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fader", description="Fader: feature-flag edge evaluation sidecar."
    )
    parser.add_argument(
        "--version", action="version", version=f"fader {importlib.metadata.version('fader')}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the sidecar (see 'fader serve --help')")
    sub.add_parser("controlplane", help="run the reference control plane")
    sub.add_parser("status", help="which snapshot version each sidecar serves")
    sub.add_parser("flags", help="release control: list, apply, dial, kill, history, rollback")
    sub.add_parser("rollout", help="rollout plans: start, status, pause, resume, abort")
    sub.add_parser("metrics", help="metrics the guardrails judge: create, list, delete")
    sub.add_parser(
        "guardrails", help="guardrails that kill a flag on a regression: set, list, clear"
    )
    sub.add_parser("push", help="push one snapshot file to a sidecar's admin listener")
    sub.add_parser("keygen", help="make an Ed25519 key pair for signing snapshots")
    sub.add_parser("sign", help="write the detached signature FILE.sig of a snapshot file")
    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate JSONL cases from stdin against a snapshot, JSONL results on stdout",
        description=(
            'Each input line: {"flag": "f", "key": "k", "bucketing_key": "b" | null, '
            '"attributes": {...}}. Each output line: {"flag", "key", "treatment", "config", '
            '"label", "version"}, or {"line": n, "error": "..."} for a malformed line, or an '
            "empty line for an empty line: output line n answers input line n."
        ),
    )
    evaluate.add_argument("--snapshot", required=True, metavar="FILE", help=".json/.msgpack/.mpk")
    validate = sub.add_parser(
        "validate",
        help="check snapshot files; exit 0 when all are valid",
        description="Check snapshot files as a sidecar would, its size limits included: "
        "FILE, several, a directory (each .json/.msgpack/.mpk in it) or - (stdin).",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    add_limit_options(validate)
    validate.add_argument(
        "--format", choices=(JSON, MSGPACK), default=JSON, help="of stdin (-); default json"
    )
    return parser


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """``--max-snapshot-bytes``, ``--max-flags``, ``--max-segment-keys``, as ``serve`` has
    them: ``validate`` and ``sign`` refuse what a sidecar with those limits would refuse."""
    defaults = SnapshotLimits()
    for flag, default in (
        ("--max-snapshot-bytes", defaults.max_snapshot_bytes),
        ("--max-flags", defaults.max_flags),
        ("--max-segment-keys", defaults.max_segment_keys),
    ):
        parser.add_argument(
            flag, type=_positive, default=default, metavar="N", help=f"as serve (default {default})"
        )


def limits_from(ns: argparse.Namespace) -> SnapshotLimits:
    return SnapshotLimits(ns.max_snapshot_bytes, ns.max_flags, ns.max_segment_keys)


def evaluate_command(path: str, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Evaluate each JSONL case; malformed lines get an error line and exit status 1."""
    try:
        snapshot = load_file(path)
    except SnapshotError as exc:
        print(f"fader evaluate: {path}: {exc}", file=stderr)
        return EXIT_INVALID
    failures = 0
    for number, line in enumerate(stdin, start=1):
        if not line.strip():
            stdout.write("\n")  # one output line per input line, blank for blank
            continue
        try:
            output: dict[str, Any] = evaluate_line(snapshot, line)
        except CaseError as exc:
            failures += 1
            output = {"line": number, "error": str(exc)}
            print(f"fader evaluate: line {number}: {exc}", file=stderr)
        stdout.write(json.dumps(output, ensure_ascii=False) + "\n")
    stdout.flush()
    return EXIT_INVALID if failures else EXIT_OK


class CaseError(ValueError):
    """An input line that is not a valid case."""


CASE_KEYS = ("flag", "key", "bucketing_key", "attributes")
_POLICY = AttributePolicy(RequestLimits().max_attributes, RequestLimits().max_attribute_size)


def evaluate_line(snapshot: Snapshot, line: str) -> dict[str, Any]:
    """One ``fader evaluate`` input line to its output object."""
    if json_depth_exceeds(line.encode()):
        raise CaseError(f"a case nests more than {MAX_DEPTH} levels deep (the nesting limit)")
    try:
        case = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CaseError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    not_text = lone_surrogate(line.encode("utf-8", "surrogatepass"), case)
    if not_text is not None:
        raise CaseError(not_text)
    if not isinstance(case, Mapping):
        raise CaseError("a case must be a JSON object")
    unknown = sorted(set(case) - set(CASE_KEYS))
    if unknown:
        raise CaseError(f"unknown key {unknown[0]!r} (a case has {', '.join(CASE_KEYS)})")
    flag, key = case.get("flag"), case.get("key")
    bucketing_key, attributes = case.get("bucketing_key"), case.get("attributes")
    if not isinstance(flag, str) or not flag:
        raise CaseError("'flag' must be a non-empty string")
    if not isinstance(key, str) or not key:
        raise CaseError("'key' must be a non-empty string")
    if bucketing_key is not None and not isinstance(bucketing_key, str):
        raise CaseError("'bucketing_key' must be a string or null")
    if attributes is not None and not isinstance(attributes, Mapping):
        raise CaseError("'attributes' must be an object or null")
    try:
        # the lanes' own policy: what gRPC, OFREP and flagd refuse is refused here too
        admitted = _POLICY.admit(attributes or {}, "attributes")
    except BadRequest as exc:
        raise CaseError(str(exc)) from None
    result = snapshot.evaluate(key, flag, bucketing_key, admitted)
    return {
        "flag": flag,
        "key": key,
        "treatment": result.treatment,
        "config": result.config,
        "label": result.label,
        "version": snapshot.version,
    }


def validate_command(
    paths: Sequence[str],
    stdout: TextIO,
    stderr: TextIO,
    limits: SnapshotLimits | None = None,
    stdin: BinaryIO | None = None,
    stdin_format: str = JSON,
) -> int:
    """Validate every file (a directory: each snapshot file in it; ``-``: stdin) as a
    sidecar would, its ``--max-*`` limits included; exit 0 only when all are valid."""
    limits = limits or SnapshotLimits()
    files: list[str] = []
    empty = 0  # directories without a snapshot file: a mistake worth exit status 1
    for path in paths:
        if path != "-" and os.path.isdir(path):
            found = sorted(str(p) for p in Path(path).iterdir() if p.suffix in SNAPSHOT_SUFFIXES)
            if not found:
                print(
                    f"fader validate: {path}: no snapshot files (.json, .msgpack, .mpk)",
                    file=stderr,
                )
                empty += 1
            files.extend(found)
        else:
            files.append(path)
    failed = empty
    for path in files:
        if path == "-":
            data = (stdin or sys.stdin.buffer).read()
            fmt = stdin_format
        else:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                print(f"fader validate: {path}: cannot read: {exc.strerror}", file=stderr)
                failed += 1
                continue
            fmt = format_for(path)
        failed += validate_bytes(path, data, fmt, limits, stdout, stderr)
    return EXIT_INVALID if failed else EXIT_OK


def validate_bytes(
    name: str, data: bytes, fmt: str, limits: SnapshotLimits, stdout: TextIO, stderr: TextIO
) -> int:
    """Print every error (flag + JSON path) and warning of one snapshot; 1 when invalid."""
    try:
        limits.check_bytes(len(data))
        document = decode(data, fmt)
    except SnapshotError as exc:
        _print_issues(name, "error", exc.issues, stderr)
        return 1
    report = check_document(document)
    _print_issues(name, "warning", report.warnings, stderr)
    errors = list(report.errors)
    if not errors:
        try:
            snapshot = load_bytes(data, fmt, name, limits)
        except SnapshotError as exc:  # the --max-* limits a sidecar would apply
            errors = exc.issues
    if errors:
        _print_issues(name, "error", errors, stderr)
        count = len(errors)
        print(f"{name}: invalid ({count} error{'s' if count != 1 else ''})", file=stderr)
        return 1
    # a plain flagd file has no version of its own: the sidecar numbers it when applied
    version = f"version {snapshot.version}" if snapshot.versioned else "no version (flagd file)"
    print(
        f"{name}: valid: {version}, {snapshot.flag_count} active flags, "
        f"{snapshot.segment_count} segments ({snapshot.segment_key_count} keys)",
        file=stdout,
    )
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _print_issues(path: str, level: str, issues: Iterable[object], out: TextIO) -> None:
    for issue in issues:
        print(f"{path}: {level}: {issue}", file=out)


if __name__ == "__main__":
    sys.exit(main())
