"""``fader flags`` and ``fader rollout``: release control from a terminal, through the admin API.

Every command talks to the control plane's HTTP API (``--server URL``, env ``FADER_SERVER``,
default http://127.0.0.1:8018; ``--token-file`` for a bearer token). Every write takes
``--reason TEXT`` (recorded in the history) and ``--base-version N`` (refused with 409 if
the flag set moved on). Exit status: 0 done, 1 refused or failed (the message says why),
2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fader.snapshot.codec import decode, format_for
from fader.snapshot.issues import SnapshotError

from sidecar.controlplane.apiclient import (
    DEFAULT_SERVER,
    SERVER_ENV,
    ApiClient,
    ApiError,
    flag_path,
)
from sidecar.controlplane.durations import format_duration, parse_duration
from sidecar.controlplane.flagset import Change, describe
from sidecar.controlplane.rollout import parse_steps

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
SUFFIXES = (".json", ".msgpack", ".mpk")


class UsageError(Exception):
    """Bad local input (a file that cannot be read): exit 2."""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        metavar="URL",
        help=f"the control plane's HTTP API (default ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    common.add_argument("--token-file", type=Path, metavar="FILE", help="bearer token")
    return common


def _writes() -> argparse.ArgumentParser:
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--reason", default="", metavar="TEXT", help="why (kept in the history)")
    writes.add_argument(
        "--base-version",
        type=int,
        metavar="N",
        help="refuse (409) unless the flag set is still at version N",
    )
    return writes


def flags_parser() -> argparse.ArgumentParser:
    common, writes = _common(), _writes()
    parser = argparse.ArgumentParser(
        prog="fader flags", description="Flags in the control plane's store: read, change, undo."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", parents=[common], help="name, state, dial, version, last change")
    get = sub.add_parser("get", parents=[common], help="one flag")
    get.add_argument("flag")
    get.add_argument(
        "--json", action="store_true", help="print its JSON definition (Split's or flagd's)"
    )
    apply = sub.add_parser(
        "apply",
        parents=[common, writes],
        help="apply flag JSON (a Split flag, a list, a snapshot, splitChanges, a flagd flags"
        " file); print the diff",
    )
    apply.add_argument("path", type=Path, metavar="FILE|DIR")
    apply.add_argument("--dry-run", action="store_true", help="only print what would change")
    apply.add_argument(
        "--replace", action="store_true", help="the files are the whole flag set: delete the rest"
    )
    diff = sub.add_parser("diff", parents=[common], help="what applying FILE|DIR would change")
    diff.add_argument("path", type=Path, metavar="FILE|DIR")
    diff.add_argument("--replace", action="store_true", help="as apply --replace would")
    dial = sub.add_parser(
        "dial",
        parents=[common, writes],
        help="the dimmer: TREATMENT gets PERCENT of the default rule, the others share the rest",
    )
    dial.add_argument("flag")
    dial.add_argument("percent", metavar="PERCENT", help="0..100")
    dial.add_argument(
        "--treatment",
        metavar="T",
        help="the treatment to dial (default: the first partition's non-default treatment)",
    )
    kill = sub.add_parser(
        "kill", parents=[common, writes], help="every key gets the default treatment"
    )
    kill.add_argument("flag")
    kill.set_defaults(reason_required=True)
    sub.add_parser("revive", parents=[common, writes], help="undo a kill").add_argument("flag")
    sub.add_parser("delete", parents=[common, writes], help="delete a flag").add_argument("flag")
    history = sub.add_parser("history", parents=[common], help="versions that changed FLAG")
    history.add_argument("flag")
    history.add_argument("--limit", type=int, default=20, help="newest N (default %(default)s)")
    history.add_argument("--json", action="store_true")
    rollback = sub.add_parser(
        "rollback",
        parents=[common, writes],
        help="restore FLAG's rules of VERSION, as a new version",
    )
    rollback.add_argument("flag")
    rollback.add_argument("--to", type=int, required=True, metavar="VERSION")
    return parser


def rollout_parser() -> argparse.ArgumentParser:
    common, writes = _common(), _writes()
    parser = argparse.ArgumentParser(
        prog="fader rollout",
        description="Rollout plans: the dial goes up step by step, each step held for --hold "
        "(and, with guardrails, only while they allow it). Abort dials the treatment back to "
        "0 %% (kill is the separate, harder stop).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    start = sub.add_parser("start", parents=[common, writes], help="start a plan for FLAG")
    start.add_argument("flag")
    start.add_argument("--steps", required=True, help="rising percentages, e.g. 1,5,25,50,100")
    start.add_argument("--hold", required=True, help="how long each step holds: 30s, 10m, 2h")
    start.add_argument("--treatment", metavar="T", help="the treatment to dial (as flags dial)")
    status = sub.add_parser("status", parents=[common], help="where FLAG's plan stands (or all)")
    status.add_argument("flag", nargs="?")
    status.add_argument("--json", action="store_true")
    for name, what in (
        ("pause", "keep the current step until resumed"),
        ("resume", "hold the current step again, then go on"),
        ("abort", "dial the treatment back to 0 %% and end the plan"),
    ):
        sub.add_parser(name, parents=[common, writes], help=what).add_argument("flag")
    return parser


# --- entry points ---------------------------------------------------------------------------


def flags_main(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = flags_parser().parse_args(argv)
    if getattr(args, "reason_required", False) and not args.reason.strip():
        print("fader flags kill: --reason TEXT is required (it is the incident's record)", file=err)
        return EXIT_USAGE
    return _run("fader flags", _FLAG_COMMANDS[args.command], args, out, err)


def rollout_main(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = rollout_parser().parse_args(argv)
    return _run("fader rollout", _ROLLOUT_COMMANDS[args.command], args, out, err)


def _run(prog: str, command: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        token = _token(args.token_file)
        client = ApiClient(args.server, token)
        return int(command(client, args, out))
    except UsageError as exc:
        print(f"{prog}: {exc}", file=err)
        return EXIT_USAGE
    except ApiError as exc:
        _print_refusal(prog, exc, err)
        return EXIT_FAILED


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                return line.strip()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: {exc.strerror}") from None
    raise UsageError(f"--token-file {path} holds no token")


def _print_refusal(prog: str, exc: ApiError, err: TextIO) -> None:
    if exc.status == 0:
        print(f"{prog}: {exc.message}", file=err)
        return
    print(f"{prog}: refused ({exc.status}): {exc.message}", file=err)
    for error in exc.body.get("errors", []):
        print(f"{error.get('source')}: error: {error.get('text')}", file=err)
    for warning in exc.body.get("warnings", []):
        print(f"{warning.get('source')}: warning: {warning.get('text')}", file=err)
    if exc.status == 409 and "current_version" in exc.body:
        print(f"{prog}: the flag set is now at version {exc.body['current_version']}", file=err)


def _author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _write_body(args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": args.reason, "author": _author(), **fields}
    if args.base_version is not None:
        body["base_version"] = args.base_version
    return body


# --- fader flags ---------------------------------------------------------------------------


def _list(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    listing = client.get("/api/v1/flags")
    print(f"flag set version {listing['version']}", file=out)
    rows = [("FLAG", "STATE", "DIAL", "VERSION", "LAST CHANGE")]
    for item in listing["flags"]:
        rows.append(
            (
                item["name"] + (" (flagd)" if item.get("dialect") == "flagd" else ""),
                item["state"] + (f" ({item['rollout']})" if item.get("rollout") else ""),
                _dial_text(item.get("dial")),
                str(item["version"]),
                _change_text(item),
            )
        )
    _table(rows, out)
    return EXIT_OK


def _get(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    flag = client.get(flag_path(args.flag))
    if args.json:
        print(json.dumps(flag["definition"], indent=2, ensure_ascii=False), file=out)
        return EXIT_OK
    definition = flag["definition"]
    if flag.get("dialect") == "flagd":
        print("\n".join(_flagd_lines(flag, definition)), file=out)
        return EXIT_OK
    lines = [
        f"flag:       {flag['name']}",
        f"state:      {flag['state']}",
        f"dial:       {_dial_text(flag.get('dial'))} (default rule)",
        f"default:    {flag.get('default_treatment')}",
        f"version:    {flag['version']} (flag set at {flag['set_version']})",
        f"changed:    {_change_text(flag)}",
    ]
    if flag.get("rollout"):
        plan = flag["rollout"]
        lines.append(f"rollout:    {plan['status']} step {plan['step']}/{len(plan['steps'])}")
    lines.append("rules:")
    for condition in definition.get("conditions", []):
        partitions = ", ".join(
            f"{p.get('treatment')} {p.get('size')}%" for p in condition.get("partitions", [])
        )
        kind = condition.get("conditionType", "WHITELIST")
        lines.append(f"  {kind:9} {condition.get('label') or '-'}: {partitions}")
    print("\n".join(lines), file=out)
    return EXIT_OK


def _flagd_lines(flag: dict[str, Any], definition: dict[str, Any]) -> list[str]:
    """A flagd flag: its state, variants and whether targeting decides among them."""
    variants = definition.get("variants") or {}
    return [
        f"flag:       {flag['name']} (flagd dialect)",
        f"state:      {flag['state']} ({definition.get('state')})",
        f"default:    {definition.get('defaultVariant')}",
        f"variants:   {', '.join(f'{k}={json.dumps(v)}' for k, v in variants.items())}",
        f"targeting:  {'yes' if definition.get('targeting') else 'none'}",
        f"version:    {flag['version']} (flag set at {flag['set_version']})",
        f"changed:    {_change_text(flag)}",
    ]


def _documents(path: Path) -> list[dict[str, Any]]:
    """The documents in FILE, or in every snapshot-like file of DIR (name order)."""
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if path.is_dir()
        else [path]
    )
    if not files:
        raise UsageError(f"{path}: no {', '.join(SUFFIXES)} file in it")
    documents = []
    for file in files:
        try:
            document = decode(file.read_bytes(), format_for(file))
        except OSError as exc:
            raise UsageError(f"{file}: cannot read: {exc.strerror}") from None
        except SnapshotError as exc:
            body = {"errors": [{"source": str(file), "text": str(i)} for i in exc.issues]}
            raise ApiError(422, f"{file} cannot be decoded", body) from None
        documents.append({"source": str(file), "document": document})
    return documents


def _apply(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    documents = _documents(args.path)
    body = _write_body(args, documents=documents, replace=args.replace)
    preview = client.post("/api/v1/apply", {**body, "dry_run": True})
    _print_changes(preview["changes"], out)
    if not preview["changes"]:
        print(f"no changes (flag set version {preview['version']})", file=out)
        return EXIT_OK
    if args.dry_run:
        print(f"dry run: nothing applied (flag set version {preview['version']})", file=out)
        return EXIT_OK
    # Based on the version the diff was computed against: a change in between is a 409.
    if args.base_version is None:
        body["base_version"] = preview["version"]
    written = client.post("/api/v1/apply", body)
    _print_notes(written, out)
    print(f"applied as version {written['version']}", file=out)
    return EXIT_OK


def _diff(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    documents = _documents(args.path)
    preview = client.post(
        "/api/v1/apply", {"documents": documents, "replace": args.replace, "dry_run": True}
    )
    _print_changes(preview["changes"], out)
    if not preview["changes"]:
        print(f"no differences (flag set version {preview['version']})", file=out)
    return EXIT_OK


def _dial(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    text = args.percent.strip().removesuffix("%")
    if not text.isdigit() or not 0 <= int(text) <= 100:
        raise UsageError(f"PERCENT must be a whole number 0..100, got {args.percent!r}")
    body = _write_body(args, percent=int(text))
    if args.treatment:
        body["treatment"] = args.treatment
    written = client.post(flag_path(args.flag, "/dial"), body)
    flag = client.get(flag_path(args.flag))
    _print_written(written, f"{args.flag}: {_dial_text(flag.get('dial'))}", out)
    return EXIT_OK


def _kill(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    written = client.post(flag_path(args.flag, "/kill"), _write_body(args))
    flag = client.get(flag_path(args.flag))
    if flag.get("dialect") == "flagd":
        what = (
            f"{args.flag} killed (flagd state DISABLED): every evaluation gets its caller's default"
        )
    else:
        what = f"{args.flag} killed: every key gets {flag.get('default_treatment')!r}"
    _print_written(written, what, out)
    return EXIT_OK


def _revive(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    written = client.post(flag_path(args.flag, "/revive"), _write_body(args))
    flag = client.get(flag_path(args.flag))
    _print_written(written, f"{args.flag} revived: {_dial_text(flag.get('dial'))}", out)
    return EXIT_OK


def _delete(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    written = client.delete(flag_path(args.flag), _write_body(args))
    _print_written(written, f"{args.flag} deleted", out)
    return EXIT_OK


def _history(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    history = client.get(flag_path(args.flag, "/history"), limit=args.limit)
    if args.json:
        print(json.dumps(history, indent=2, ensure_ascii=False), file=out)
        return EXIT_OK
    rows = [("VERSION", "TIME (UTC)", "AUTHOR", "ACTION", "REASON")]
    details: dict[int, list[str]] = {}
    for record in history["versions"]:
        rows.append(
            (
                str(record["version"]),
                _time(record["time"]),
                record["author"],
                record["action"],
                record["reason"] or "-",
            )
        )
        details[len(rows) - 1] = [
            line for change in record["changes"] for line in describe(Change.from_json(change))
        ]
    _table(rows, out, details)
    return EXIT_OK


def _rollback(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    written = client.post(flag_path(args.flag, "/rollback"), _write_body(args, to_version=args.to))
    _print_written(written, f"{args.flag}: rules of version {args.to} restored", out)
    return EXIT_OK


_FLAG_COMMANDS = {
    "list": _list,
    "get": _get,
    "apply": _apply,
    "diff": _diff,
    "dial": _dial,
    "kill": _kill,
    "revive": _revive,
    "delete": _delete,
    "history": _history,
    "rollback": _rollback,
}


# --- fader rollout -------------------------------------------------------------------------


def _start(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    try:
        steps = parse_steps(args.steps)
        hold = parse_duration(args.hold)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    body = _write_body(args, steps=list(steps), hold_seconds=hold)
    if args.treatment:
        body["treatment"] = args.treatment
    plan = client.post(flag_path(args.flag, "/rollout"), body)
    print(
        f"{args.flag}: rollout started, {plan['treatment']} at {plan['percent']} % "
        f"(step 1/{len(plan['steps'])}, version {plan['written']['version']}); "
        f"steps {','.join(map(str, plan['steps']))} every {format_duration(hold)}",
        file=out,
    )
    return EXIT_OK


def _status(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.flag is None:
        plans = client.get("/api/v1/rollouts")["rollouts"]
    else:
        plans = [client.get(flag_path(args.flag, "/rollout"))]
    if args.json:
        print(json.dumps(plans if args.flag is None else plans[0], indent=2), file=out)
        return EXIT_OK
    if not plans:
        print("no rollout plans", file=out)
    for plan in plans:
        _print_plan(plan, out)
    return EXIT_OK


def _plan_action(action: str) -> Any:
    def run(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
        plan = client.post(flag_path(args.flag, f"/rollout/{action}"), _write_body(args))
        _print_plan(plan, out)
        return EXIT_OK

    return run


_ROLLOUT_COMMANDS = {
    "start": _start,
    "status": _status,
    "pause": _plan_action("pause"),
    "resume": _plan_action("resume"),
    "abort": _plan_action("abort"),
}


# --- printing ------------------------------------------------------------------------------


def _print_plan(plan: dict[str, Any], out: TextIO) -> None:
    steps = plan["steps"]
    marks = " ".join(f"[{s}]" if i + 1 == plan["step"] else str(s) for i, s in enumerate(steps))
    where = (
        f"{plan['treatment']} dialled back to 0 %"
        if plan["status"] == "aborted"
        else f"{plan['treatment']} at {plan['percent']} %"
    )
    line = (
        f"{plan['flag']}: {plan['status']}, {where} "
        f"(step {plan['step']}/{len(steps)}: {marks}; hold {format_duration(plan['hold_seconds'])})"
    )
    print(line, file=out)
    if plan.get("next_step_in_seconds") is not None:
        print(f"  next step in {plan['next_step_in_seconds']:.0f} s", file=out)
    if plan.get("gate"):
        print(f"  held by the gate: {plan['gate']}", file=out)
    if plan.get("note"):
        print(f"  note: {plan['note']}", file=out)


def _print_written(written: dict[str, Any], what: str, out: TextIO) -> None:
    if written["changed"]:
        print(f"{what} (version {written['version']})", file=out)
    else:
        print(f"{what} (no change; flag set version {written['version']})", file=out)
    _print_notes(written, out)


def _print_notes(written: dict[str, Any], out: TextIO) -> None:
    for note in written.get("notes", []):
        print(f"note: {note}", file=out)


def _print_changes(changes: list[dict[str, Any]], out: TextIO) -> None:
    for change in changes:
        for line in describe(Change.from_json(change)):
            print(line, file=out)


def _dial_text(dial: dict[str, Any] | None) -> str:
    return "-" if not dial else f"{dial['treatment']} {dial['percent']}%"


def _change_text(item: dict[str, Any]) -> str:
    if item.get("changed_at") is None:
        return "-"
    reason = f": {item['reason']}" if item.get("reason") else ""
    return f"{_time(item['changed_at'])} {item.get('action')} by {item.get('author')}{reason}"


def _time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _table(
    rows: Sequence[tuple[str, ...]], out: TextIO, details: dict[int, list[str]] | None = None
) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)
        for line in (details or {}).get(index, []):
            print(f"    {line}", file=out)
