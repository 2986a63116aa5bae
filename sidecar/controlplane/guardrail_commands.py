"""``fader metrics`` and ``fader guardrails``: metric and guardrail definitions from a terminal.

Through the control plane's HTTP API, with the same ``--server`` / ``--token-file`` options,
exit statuses (0 done, 1 refused or failed, 2 usage) and refusal messages as ``fader flags``
(``commands``)::

    fader metrics create errors --event error --kind conversion --direction decrease
    fader metrics list
    fader guardrails set checkout --metric errors --max-regression 0.01 [--baseline off]
                         [--webhook URL ...]
    fader guardrails list [FLAG]
    fader guardrails clear FLAG [--metric NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any, TextIO

from sidecar.controlplane.apiclient import ApiClient
from sidecar.controlplane.commands import EXIT_OK, _common, _run, _table
from sidecar.controlplane.statistics import Direction, MetricKind


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def metrics_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="fader metrics",
        description="Metrics the guardrails judge: each reads one Track event type.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = sub.add_parser("create", parents=[common], help="create (or replace) a metric")
    create.add_argument("name")
    create.add_argument("--event", required=True, metavar="TYPE", help="the Track event type")
    create.add_argument(
        "--kind",
        required=True,
        choices=[k.value for k in MetricKind],
        help="conversion: did the key send it after its first exposure; count: how many times "
        "per key; mean: the mean of its value (e.g. latency)",
    )
    create.add_argument(
        "--direction",
        required=True,
        choices=[d.value for d in Direction],
        help="decrease: lower is better (errors, latency); increase: higher is better",
    )
    create.add_argument("--description", default="", metavar="TEXT")
    listing = sub.add_parser("list", parents=[common], help="every metric")
    listing.add_argument("--json", action="store_true")
    delete = sub.add_parser("delete", parents=[common], help="delete a metric no flag uses")
    delete.add_argument("name")
    return parser


def guardrails_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="fader guardrails",
        description="Guardrails: a metric regressing beyond its tolerance kills the flag.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    guard = sub.add_parser("set", parents=[common], help="guard FLAG with a metric")
    guard.add_argument("flag")
    guard.add_argument("--metric", required=True, metavar="NAME")
    guard.add_argument(
        "--max-regression",
        required=True,
        type=float,
        metavar="X",
        help="tolerated regression in the metric's unit (0.01 = one point of conversion)",
    )
    guard.add_argument(
        "--baseline", default="off", metavar="T", help="treatment compared with (default off)"
    )
    guard.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="also POST this flag's decisions here; repeatable",
    )
    listing = sub.add_parser("list", parents=[common], help="every guardrail (or FLAG's)")
    listing.add_argument("flag", nargs="?")
    listing.add_argument("--json", action="store_true")
    clear = sub.add_parser("clear", parents=[common], help="remove FLAG's guardrails")
    clear.add_argument("flag")
    clear.add_argument("--metric", metavar="NAME", help="only this metric's guardrail")
    return parser


def metrics_main(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = metrics_parser().parse_args(argv)
    return _run("fader metrics", _METRIC_COMMANDS[args.command], args, out, err)


def guardrails_main(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = guardrails_parser().parse_args(argv)
    return _run("fader guardrails", _GUARDRAIL_COMMANDS[args.command], args, out, err)


# --- fader metrics ------------------------------------------------------------------------


def _create_metric(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {
        "event": args.event,
        "kind": args.kind,
        "direction": args.direction,
        "description": args.description,
    }
    made = client.put(f"/api/v1/metrics/{_quote(args.name)}", body)
    verb = "created" if made["created"] else "replaced"
    print(f"metric {args.name} {verb}: {_metric_text(made['metric'])}", file=out)
    return EXIT_OK


def _list_metrics(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    metrics = client.get("/api/v1/metrics")["metrics"]
    if args.json:
        print(json.dumps(metrics, indent=2), file=out)
        return EXIT_OK
    rows = [("METRIC", "EVENT", "KIND", "DIRECTION", "DESCRIPTION")]
    rows += [
        (m["name"], m["event"], m["kind"], m["direction"], m["description"] or "-") for m in metrics
    ]
    _table(rows, out)
    return EXIT_OK


def _delete_metric(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    client.delete(f"/api/v1/metrics/{_quote(args.name)}", {})
    print(f"metric {args.name} deleted", file=out)
    return EXIT_OK


def _metric_text(metric: dict[str, Any]) -> str:
    better = "lower" if metric["direction"] == "decrease" else "higher"
    return f"{metric['kind']} of event {metric['event']!r}, {better} is better"


_METRIC_COMMANDS = {"create": _create_metric, "list": _list_metrics, "delete": _delete_metric}


# --- fader guardrails ---------------------------------------------------------------------


def _set(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = {
        "max_regression": args.max_regression,
        "baseline": args.baseline,
        "webhooks": args.webhook,
    }
    rule = client.put(f"/api/v1/guardrails/{_quote(args.flag)}/{_quote(args.metric)}", body)
    print(
        f"{args.flag}: guarded by {rule['metric']}, tolerating a regression of "
        f"{rule['max_regression']:g} against {rule['baseline']!r}",
        file=out,
    )
    for url in args.webhook:
        print(f"  decisions also go to {url}", file=out)
    return EXIT_OK


def _list(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.flag is None:
        listing = client.get("/api/v1/guardrails")
        rules, hooks = listing["guardrails"], listing["webhooks"]
    else:
        listing = client.get(f"/api/v1/guardrails/{_quote(args.flag)}")
        rules, hooks = listing["guardrails"], {args.flag: listing["webhooks"]}
    if args.json:
        print(json.dumps({"guardrails": rules, "webhooks": hooks}, indent=2), file=out)
        return EXIT_OK
    if not rules:
        print("no guardrails", file=out)
        return EXIT_OK
    rows = [("FLAG", "METRIC", "MAX REGRESSION", "BASELINE", "WEBHOOKS")]
    rows += [
        (
            r["flag"],
            r["metric"],
            f"{r['max_regression']:g}",
            r["baseline"],
            ", ".join(hooks.get(r["flag"], [])) or "-",
        )
        for r in rules
    ]
    _table(rows, out)
    return EXIT_OK


def _clear(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    path = f"/api/v1/guardrails/{_quote(args.flag)}"
    if args.metric:
        path += f"/{_quote(args.metric)}"
    removed = client.delete(path, {})["removed"]
    print(f"{args.flag}: {removed} guardrail(s) removed", file=out)
    return EXIT_OK


_GUARDRAIL_COMMANDS = {"set": _set, "list": _list, "clear": _clear}
