"""HTTP routes of the guardrails: metrics, guardrails, releases (JSON and pages), ``/metrics``.

Registered on the control plane's router (``web.Router``) next to the release API. Reads need
the ``viewer`` role, writes ``editor``; ``/metrics`` is public like the sidecar's. Refusals:
400 a value that cannot be stored (the message says which and why), 404 no such flag,
metric, guardrail or release, 409 a metric still in use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

from sidecar.controlplane.alerts import Alerts
from sidecar.controlplane.apitokens import EDITOR, VIEWER
from sidecar.controlplane.assessment import default_split
from sidecar.controlplane.decisions import DecisionLog, Kind
from sidecar.controlplane.definitions import (
    DEFAULT_BASELINE,
    DefinitionError,
    Definitions,
    InUse,
    MetricDef,
    NotFound,
)
from sidecar.controlplane.edits import SplitOnly, UnknownFlag
from sidecar.controlplane.flagset import FLAGD
from sidecar.controlplane.release_page import render_index, render_release
from sidecar.controlplane.releases import Releases
from sidecar.controlplane.statistics import Direction, MetricKind
from sidecar.controlplane.store import FlagStore
from sidecar.controlplane.web import PUBLIC, HttpError, Request, Response, Router

PREFIX: Final = "/api/v1"
HTML: Final = "text/html; charset=utf-8"
PROMETHEUS: Final = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_FIELDS: dict[str, Any] = {
    "name": {"type": "string"},
    "event": {"type": "string", "description": "the Track event type it reads"},
    "kind": {"type": "string", "enum": [k.value for k in MetricKind]},
    "direction": {
        "type": "string",
        "enum": [d.value for d in Direction],
        "description": "decrease: lower is better (errors, latency)",
    },
    "description": {"type": "string"},
}
_METRIC = {"type": "object", "properties": _METRIC_FIELDS}
_REGRESSION = {
    "type": "number",
    "description": "tolerated regression in the metric's unit (0.01 = 1 point)",
}
_GUARDRAIL = {
    "type": "object",
    "properties": {
        "flag": {"type": "string"},
        "metric": {"type": "string"},
        "max_regression": _REGRESSION,
        "baseline": {"type": "string"},
        "created_at": {"type": "number"},
    },
}
_METRIC_ROW = {
    "type": "object",
    "properties": {
        "metric": {"type": "string"},
        "treatment": {"type": "string"},
        "baseline": {"type": "string"},
        "units": {"type": "integer"},
        "mean": {"type": "number", "nullable": True},
        "baseline_mean": {"type": "number", "nullable": True},
        "delta": {"type": "number", "nullable": True},
        "ci": {"type": "array", "nullable": True, "items": {"type": "number"}},
        "p_value": {"type": "number", "nullable": True},
        "verdict": {"type": "string", "enum": ["breach", "healthy", "hold", "srm"]},
    },
}
RELEASE_SCHEMA: Final = {
    "type": "object",
    "required": ["flag", "state", "dial", "decisions", "metrics"],
    "properties": {
        "flag": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "paused", "killed", "complete"]},
        "dial": {"type": "integer", "description": "% of keys on the release's treatment"},
        "decisions": {"type": "array", "items": {"type": "object"}},
        "metrics": {"type": "array", "items": _METRIC_ROW},
    },
}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


def _refusals(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    @functools.wraps(handler)
    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except DefinitionError as exc:
            raise HttpError(400, str(exc)) from None
        except (NotFound, UnknownFlag) as exc:
            raise HttpError(404, str(exc)) from None
        except InUse as exc:
            raise HttpError(409, str(exc)) from None
        except SplitOnly as exc:
            raise HttpError(422, str(exc)) from None

    return wrapped


class GuardrailApi:
    """The routes; ``alerts`` may be None (then its counters read 0)."""

    def __init__(
        self,
        store: FlagStore,
        definitions: Definitions,
        decisions: DecisionLog,
        releases: Releases,
        alerts: Alerts | None = None,
    ) -> None:
        self.store = store
        self.definitions = definitions
        self.decisions = decisions
        self.releases = releases
        self.alerts = alerts

    def register(self, router: Router) -> None:
        add = router.add
        metric = PREFIX + "/metrics/{metric}"
        guard = PREFIX + "/guardrails/{flag}"
        add("GET", PREFIX + "/metrics", self.list_metrics, role=VIEWER, tag="guardrails",
            summary="every metric", response_schema=_obj(
                {"metrics": {"type": "array", "items": _METRIC}}))  # fmt: skip
        add("GET", metric, _refusals(self.get_metric), role=VIEWER, tag="guardrails",
            errors=(404,), summary="one metric", response_schema=_METRIC)  # fmt: skip
        add("PUT", metric, _refusals(self.put_metric), role=EDITOR, tag="guardrails",
            summary="create or replace a metric: an event type, a kind and a direction",
            request_schema=_obj({k: v for k, v in _METRIC_FIELDS.items() if k != "name"},
                                ("event", "kind", "direction")),
            response_schema=_obj({"metric": _METRIC, "created": {"type": "boolean"}}))  # fmt: skip
        add("DELETE", metric, _refusals(self.delete_metric), role=EDITOR, tag="guardrails",
            errors=(404, 409), summary="delete a metric (409 while it guards a flag)")  # fmt: skip
        add("GET", PREFIX + "/guardrails", self.list_guardrails, role=VIEWER, tag="guardrails",
            summary="every guardrail, and each flag's webhooks", response_schema=_obj(
                {"guardrails": {"type": "array", "items": _GUARDRAIL},
                 "webhooks": {"type": "object"}}))  # fmt: skip
        add("GET", guard, self.flag_guardrails, role=VIEWER, tag="guardrails",
            summary="the flag's guardrails and webhooks")  # fmt: skip
        add("PUT", guard + "/{metric}", _refusals(self.set_guardrail), role=EDITOR,
            tag="guardrails", errors=(404,),
            summary="guard the flag with a metric: a regression beyond max_regression kills it",
            request_schema=_obj({
                "max_regression": _REGRESSION,
                "baseline": {"type": "string", "description": "default off"},
                "webhooks": {"type": "array", "items": {"type": "string"},
                             "description": "also POST this flag's decisions here"}},
                ("max_regression",)),
            response_schema=_GUARDRAIL)  # fmt: skip
        add("DELETE", guard, _refusals(self.clear_flag), role=EDITOR, tag="guardrails",
            summary="remove every guardrail and webhook of the flag")  # fmt: skip
        add("DELETE", guard + "/{metric}", _refusals(self.clear_metric), role=EDITOR,
            tag="guardrails", errors=(404,), summary="remove one guardrail")  # fmt: skip
        add("GET", PREFIX + "/releases", self.list_releases, role=VIEWER, tag="releases",
            summary="every flag with a plan or guardrail: state, dial, units, worst")  # fmt: skip
        add("GET", PREFIX + "/releases/{flag}", _refusals(self.release), role=VIEWER,
            tag="releases", errors=(404,),
            summary="a release's state, dial, decisions and metrics (Argo Rollouts reads this)",
            response_schema=RELEASE_SCHEMA)  # fmt: skip
        add("GET", "/releases", self.index_page, role=VIEWER, tag="releases",
            summary="the releases page (HTML)")  # fmt: skip
        add("GET", "/releases/{flag}", _refusals(self.release_page), role=VIEWER,
            tag="releases", errors=(404,),
            summary="one release's page: dial, exposures and metrics over time (HTML)")  # fmt: skip
        add("GET", "/metrics", self.prometheus, role=PUBLIC, tag="status",
            summary="Prometheus metrics of the guardrails and alerts")  # fmt: skip

    # --- metrics ---------------------------------------------------------------------------

    def list_metrics(self, request: Request) -> Response:
        return Response.json({"metrics": [m.to_json() for m in self.definitions.metrics()]})

    def get_metric(self, request: Request) -> Response:
        return Response.json(self.definitions.metric(request.params["metric"]).to_json())

    def put_metric(self, request: Request) -> Response:
        metric = MetricDef.parse(request.params["metric"], request.json_object())
        created = self.definitions.put_metric(metric)
        return Response.json({"metric": metric.to_json(), "created": created})

    def delete_metric(self, request: Request) -> Response:
        self.definitions.delete_metric(request.params["metric"])
        return Response.json({"deleted": request.params["metric"]})

    # --- guardrails ------------------------------------------------------------------------

    def list_guardrails(self, request: Request) -> Response:
        rules = self.definitions.guardrails()
        hooks = {flag: self.definitions.webhooks(flag) for flag in {r.flag for r in rules}}
        return Response.json({"guardrails": [r.to_json() for r in rules], "webhooks": hooks})

    def flag_guardrails(self, request: Request) -> Response:
        flag = request.params["flag"]
        return Response.json(
            {
                "flag": flag,
                "guardrails": [r.to_json() for r in self.definitions.guardrails(flag)],
                "webhooks": self.definitions.webhooks(flag),
            }
        )

    def set_guardrail(self, request: Request) -> Response:
        flag, metric = request.params["flag"], request.params["metric"]
        body = request.json_object()
        flags = self.store.state.flags
        if flags.dialect(flag) == FLAGD:
            raise SplitOnly(flag, "a guardrail")
        definition = flags.flags.get(flag)
        if definition is None:
            raise UnknownFlag(flag)
        baseline = body.get("baseline") or DEFAULT_BASELINE
        if not isinstance(baseline, str):
            raise DefinitionError("baseline: the name of one of the flag's treatments")
        treatments = set(default_split(definition).weights) | {definition.get("defaultTreatment")}
        if baseline not in treatments:
            shown = ", ".join(sorted(str(t) for t in treatments))
            raise DefinitionError(f"baseline {baseline!r} is not a treatment of {flag} ({shown})")
        webhooks = body.get("webhooks", [])
        if not isinstance(webhooks, list):
            raise DefinitionError("webhooks: a list of URLs")
        if "max_regression" not in body:
            raise DefinitionError("max_regression: required (in the metric's unit, 0.01 = 1 pt)")
        rule = self.definitions.set_guardrail(
            flag, metric, body["max_regression"], baseline, webhooks
        )
        return Response.json(rule.to_json())

    def clear_flag(self, request: Request) -> Response:
        flag = request.params["flag"]
        return Response.json({"flag": flag, "removed": self.definitions.clear(flag)})

    def clear_metric(self, request: Request) -> Response:
        flag, metric = request.params["flag"], request.params["metric"]
        if self.definitions.clear(flag, metric) == 0:
            raise NotFound(f"{flag} has no guardrail on {metric!r}")
        return Response.json({"flag": flag, "removed": 1})

    # --- releases --------------------------------------------------------------------------

    def list_releases(self, request: Request) -> Response:
        return Response.json({"releases": self._summaries()})

    def _summaries(self) -> list[dict[str, Any]]:
        out = []
        for flag in self.releases.flags():
            try:
                out.append(self.releases.summary(flag))
            except UnknownFlag:
                continue  # removed between the listing and the summary
        return out

    def release(self, request: Request) -> Response:
        return Response.json(self.releases.report(request.params["flag"]))

    def index_page(self, request: Request) -> Response:
        html = render_index(self._summaries(), self.releases.clock())
        return Response(200, html.encode(), HTML)

    def release_page(self, request: Request) -> Response:
        flag = request.params["flag"]
        report = self.releases.report(flag)
        timeline = self.releases.timeline(flag)
        catalogue = {m.name: m for m in self.definitions.metrics()}
        info = {
            rule.metric: (
                catalogue[rule.metric].kind,
                catalogue[rule.metric].direction,
                rule.max_regression,
            )
            for rule in self.definitions.guardrails(flag)
            if rule.metric in catalogue
        }
        html = render_release(report, timeline, self.decisions.for_flag(flag), info)
        return Response(200, html.encode(), HTML)

    # --- /metrics --------------------------------------------------------------------------

    def prometheus(self, request: Request) -> Response:
        return Response(200, metrics_text(self.decisions, self.alerts).encode(), PROMETHEUS)


def metrics_text(decisions: DecisionLog, alerts: Alerts | None) -> str:
    """Prometheus text exposition of the guardrail counters (this process's)."""
    counts = dict(decisions.counts)
    lines = [
        "# HELP fader_guardrail_decisions_total Guardrail decisions recorded by this process.",
        "# TYPE fader_guardrail_decisions_total counter",
    ]
    lines += [
        f'fader_guardrail_decisions_total{{kind="{k.value}"}} {counts[k.value]}' for k in Kind
    ]
    sent, failed = (alerts.sent, alerts.failed) if alerts is not None else (0, 0)
    lines += [
        "# HELP fader_alerts_sent_total Alerts delivered to a webhook (2xx).",
        "# TYPE fader_alerts_sent_total counter",
        f"fader_alerts_sent_total {sent}",
        "# HELP fader_alerts_failed_total Alerts given up on after every retry, or dropped.",
        "# TYPE fader_alerts_failed_total counter",
        f"fader_alerts_failed_total {failed}",
    ]
    return "\n".join(lines) + "\n"
