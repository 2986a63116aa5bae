"""The admin API for releases: flags, their history, the dimmer, the kill switch, rollout plans.

JSON over HTTP on the control plane's ``--http-listen`` (``web.Router``). Reads need the
``viewer`` role, writes ``editor``. Every write may name ``base_version``, the flag-set
version it was based on: if the store has moved on, 409 and nothing is written. Errors are
JSON ``{"error", "status", ...}``: 400 malformed request, 401 no or unknown token, 403 role,
404 unknown flag / version / plan, 409 stale base or a plan state that forbids it, 422 the
change would leave invalid flags (``errors``: each with its flag and JSON path exactly as
``fader validate`` prints them) or asks the dimmer or a rollout plan of a flagd-dialect flag.

Flags of both dialects share the routes: a flagd flag is put as its flagd JSON (``variants``,
``state``...), listed with ``"dialect": "flagd"``, killed by ``state: DISABLED``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Final

from sidecar.controlplane import dimmer
from sidecar.controlplane.apitokens import EDITOR, VIEWER
from sidecar.controlplane.documents import InvalidFlags, Part, parse_document
from sidecar.controlplane.edits import SplitOnly, UnknownFlag, apply_documents, split_flag
from sidecar.controlplane.flagset import EVALUATOR, FLAG, FLAGD, FLAGD_SET, KINDS, FlagSet
from sidecar.controlplane.rollout import NoPlan, PlanError, RolloutEngine, check_steps
from sidecar.controlplane.store import FlagStore, StaleVersion, UnknownVersion, VersionRecord
from sidecar.controlplane.web import HttpError, Request, Response, Router

PREFIX: Final = "/api/v1"
MAX_TEXT: Final = 1000
MAX_HISTORY: Final = 1000

_REASON = {"type": "string", "description": "why (recorded in the history)"}
_BASE = {
    "type": "integer",
    "minimum": 0,
    "description": "the flag-set version this change is based on; 409 if the store moved on",
}
_AUTHOR = {"type": "string", "description": "recorded author when the token has no name"}
_WRITE_FIELDS = {"reason": _REASON, "base_version": _BASE, "author": _AUTHOR}
_CHANGE = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "name": {"type": "string"},
        "op": {"type": "string", "enum": ["added", "changed", "removed"]},
        "fields": {"type": "array", "items": {"type": "object"}},
    },
}
WRITTEN_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "version": {"type": "integer", "description": "the new version (or the current one)"},
        "changed": {"type": "boolean"},
        "changes": {"type": "array", "items": _CHANGE},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}
_DIAL = {
    "type": "object",
    "nullable": True,
    "properties": {"treatment": {"type": "string"}, "percent": {"type": "integer"}},
}
_SUMMARY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "dialect": {"type": "string", "enum": ["split", "flagd"]},
        "state": {"type": "string", "enum": ["active", "killed", "archived"]},
        "dial": _DIAL,
        "version": {"type": "integer", "description": "version of its last change"},
        "changed_at": {"type": "number"},
        "author": {"type": "string"},
        "reason": {"type": "string"},
        "rollout": {"type": "string", "nullable": True},
    },
}
_RECORD = {
    "type": "object",
    "properties": {
        "version": {"type": "integer"},
        "time": {"type": "number"},
        "author": {"type": "string"},
        "reason": {"type": "string"},
        "action": {"type": "string"},
        "changes": {"type": "array", "items": _CHANGE},
    },
}
_PLAN = {"type": "object", "description": "a rollout plan and where it stands"}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _errors(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """The store's and the plans' refusals as HTTP errors."""

    @functools.wraps(handler)
    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except InvalidFlags as exc:
            raise HttpError(
                422,
                f"invalid flags: {len(exc.errors)} error(s); nothing was written",
                errors=[e.to_json() for e in exc.errors],
                warnings=[w.to_json() for w in exc.warnings],
            ) from None
        except (UnknownFlag, UnknownVersion, NoPlan) as exc:
            raise HttpError(404, str(exc)) from None
        except StaleVersion as exc:
            raise HttpError(
                409, str(exc), base_version=exc.base, current_version=exc.current
            ) from None
        except PlanError as exc:
            raise HttpError(409, str(exc)) from None
        except SplitOnly as exc:
            raise HttpError(422, str(exc)) from None

    return wrapped


class ReleaseApi:
    """Registers the release routes on a router."""

    def __init__(self, store: FlagStore, rollouts: RolloutEngine) -> None:
        self.store = store
        self.rollouts = rollouts

    def register(self, router: Router) -> None:
        flag = PREFIX + "/flags/{flag}"
        add = router.add
        add("GET", PREFIX + "/flags", self.list_flags, role=VIEWER, tag="flags",
            summary="every flag: state, dial, version and last change",
            response_schema=_obj({"version": {"type": "integer"},
                                  "flags": {"type": "array", "items": _SUMMARY}}))  # fmt: skip
        add("GET", flag, _errors(self.get_flag), role=VIEWER, tag="flags", errors=(404,),
            summary="one flag: its definition, dial, last change and rollout")  # fmt: skip
        add("PUT", flag, _errors(self.put_flag), role=EDITOR, tag="flags", errors=(409, 422),
            summary="create or replace one flag (Split flag JSON, or a flagd flag's JSON)",
            request_schema=_obj({"definition": {"type": "object"}, **_WRITE_FIELDS},
                                ("definition",)),
            response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("DELETE", flag, _errors(self.delete_flag), role=EDITOR, tag="flags",
            errors=(404, 409, 422), summary="delete a flag (422 while another depends on it)",
            request_schema=_obj(_WRITE_FIELDS), response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("POST", flag + "/dial", _errors(self.dial), role=EDITOR, tag="flags",
            errors=(404, 409, 422),
            summary="the dimmer: a treatment's share of the default rule; raising only adds keys",
            request_schema=_obj({"percent": {"type": "integer", "minimum": 0, "maximum": 100},
                                 "treatment": {"type": "string"}, **_WRITE_FIELDS}, ("percent",)),
            response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("POST", flag + "/kill", _errors(self.kill), role=EDITOR, tag="flags",
            errors=(404, 409), summary="kill: every key gets the default treatment",
            request_schema=_obj(_WRITE_FIELDS, ("reason",)),
            response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("POST", flag + "/revive", _errors(self.revive), role=EDITOR, tag="flags",
            errors=(404, 409), summary="undo a kill", request_schema=_obj(_WRITE_FIELDS),
            response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("POST", flag + "/rollback", _errors(self.rollback), role=EDITOR, tag="flags",
            errors=(404, 409, 422),
            summary="restore the flag's rules of an older version, as a new version",
            request_schema=_obj({"to_version": {"type": "integer"}, **_WRITE_FIELDS},
                                ("to_version",)),
            response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("GET", flag + "/history", _errors(self.flag_history), role=VIEWER, tag="flags",
            errors=(404,), summary="the versions that changed this flag, newest first",
            response_schema=_obj({"versions": {"type": "array", "items": _RECORD}}))  # fmt: skip
        add("POST", PREFIX + "/apply", _errors(self.apply), role=EDITOR, tag="flags",
            errors=(409, 422),
            summary="apply flag JSON (one Split flag, a list, a snapshot with its flagd section,"
            " splitChanges, or a flagd flags file)",
            request_schema=_obj({
                "document": {"description": "one Split flag, a list, a snapshot, splitChanges"
                              " or a flagd flags file"},
                "documents": {"type": "array", "items": _obj(
                    {"source": {"type": "string"}, "document": {}}, ("document",))},
                "replace": {"type": "boolean", "description": "the documents are the whole set"},
                "dry_run": {"type": "boolean", "description": "only say what would change"},
                **_WRITE_FIELDS}),
            response_schema=WRITTEN_SCHEMA)  # fmt: skip
        add("GET", PREFIX + "/versions", self.versions, role=VIEWER, tag="flags",
            summary="the flag set's versions, newest first",
            response_schema=_obj({"version": {"type": "integer"},
                                  "versions": {"type": "array", "items": _RECORD}}))  # fmt: skip
        add("GET", PREFIX + "/snapshot", self.snapshot, role=VIEWER, tag="flags",
            summary="the current snapshot document, as sidecars receive it")  # fmt: skip
        add("GET", PREFIX + "/rollouts", self.list_rollouts, role=VIEWER, tag="rollouts",
            summary="every rollout plan",
            response_schema=_obj({"rollouts": {"type": "array", "items": _PLAN}}))  # fmt: skip
        add("GET", flag + "/rollout", _errors(self.get_rollout), role=VIEWER, tag="rollouts",
            errors=(404,), summary="the flag's rollout plan", response_schema=_PLAN)  # fmt: skip
        add("POST", flag + "/rollout", _errors(self.start_rollout), role=EDITOR,
            tag="rollouts", errors=(404, 409, 422),
            summary="start a plan: dial the steps in turn, each held hold_seconds",
            request_schema=_obj({
                "steps": {"type": "array", "items": {"type": "integer"}},
                "hold_seconds": {"type": "number", "minimum": 0},
                "treatment": {"type": "string"}, **_WRITE_FIELDS}, ("steps", "hold_seconds")),
            response_schema=_PLAN)  # fmt: skip
        for action, what in (
            ("pause", "pause: keep the current step"),
            ("resume", "resume: hold the current step again, then go on"),
            ("abort", "abort: dial the treatment back to 0 % and end the plan"),
        ):
            add("POST", f"{flag}/rollout/{action}", _errors(self._plan_action(action)),
                role=EDITOR, tag="rollouts", errors=(404, 409), summary=what,
                request_schema=_obj(_WRITE_FIELDS), response_schema=_PLAN)  # fmt: skip

    # --- reading ---------------------------------------------------------------------------

    def list_flags(self, request: Request) -> Response:
        state = self.store.state
        names = state.flags.flag_names()
        versions = {name: _flag_version(state.flags, state.changed, name) for name in names}
        records = self.store.records(set(versions.values()))
        plans = self.rollouts.plans()
        flags = []
        for name in names:
            version = versions[name]
            flags.append(_summary(state.flags, name, version, records.get(version), plans))
        return Response.json({"version": state.version, "flags": flags})

    def get_flag(self, request: Request) -> Response:
        name = request.params["flag"]
        state = self.store.state
        kind = state.flags.dialect(name)
        if kind is None:
            raise UnknownFlag(name)
        version = _flag_version(state.flags, state.changed, name)
        record = self.store.records({version}).get(version)
        plans = self.rollouts.plans()
        body = _summary(state.flags, name, version, record, plans)
        body["set_version"] = state.version
        body["definition"] = state.flags.table(kind)[name]
        if kind == FLAGD:
            body["flagd"] = _flagd_context(state.flags)
        plan = plans.get(name)
        body["rollout"] = None if plan is None else self.rollouts.view(plan)
        return Response.json(body)

    def flag_history(self, request: Request) -> Response:
        name = request.params["flag"]
        limit = _int_arg(request, "limit", 100, MAX_HISTORY)
        records = self.store.history(name, limit)
        if not records and self.store.state.flags.dialect(name) is None:
            raise UnknownFlag(name)
        return Response.json({"flag": name, "versions": [r.to_json(name) for r in records]})

    def versions(self, request: Request) -> Response:
        limit = _int_arg(request, "limit", 100, MAX_HISTORY)
        records = self.store.history(None, limit)
        return Response.json(
            {"version": self.store.version, "versions": [r.to_json() for r in records]}
        )

    def snapshot(self, request: Request) -> Response:
        return Response.json(self.store.state.document())

    # --- writing ---------------------------------------------------------------------------

    def put_flag(self, request: Request) -> Response:
        body = request.json_object()
        if "definition" not in body:
            raise HttpError(400, "'definition' (the flag's Split JSON) is required")
        written = self.store.put_flag(
            request.params["flag"], body["definition"], **_write_args(request, body)
        )
        return Response.json(written.to_json())

    def delete_flag(self, request: Request) -> Response:
        body = request.json_object()
        written = self.store.delete(request.params["flag"], **_write_args(request, body))
        return Response.json(written.to_json())

    def dial(self, request: Request) -> Response:
        body = request.json_object()
        name = request.params["flag"]
        percent = body.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise HttpError(400, f"'percent' must be an integer 0..100, got {percent!r}")
        treatment = _optional_text(body, "treatment")
        if self.rollouts.is_running(name):
            raise PlanError(f"{name} has a running rollout plan: pause or abort it first")
        split_flag(self.store.state.flags, name, "the dimmer")  # refused before the write
        written = self.store.dial(name, percent, treatment, **_write_args(request, body))
        return Response.json(written.to_json())

    def kill(self, request: Request) -> Response:
        body = request.json_object()
        args = _write_args(request, body)
        if not args["reason"]:
            raise HttpError(400, "a kill needs a 'reason'")
        name = request.params["flag"]
        written = self.rollouts.kill(name, **args)
        return Response.json(written.to_json())

    def revive(self, request: Request) -> Response:
        body = request.json_object()
        written = self.store.revive(request.params["flag"], **_write_args(request, body))
        return Response.json(written.to_json())

    def rollback(self, request: Request) -> Response:
        body = request.json_object()
        to_version = body.get("to_version")
        if isinstance(to_version, bool) or not isinstance(to_version, int):
            raise HttpError(400, "'to_version' must be an integer")
        written = self.store.rollback(
            request.params["flag"], to_version, **_write_args(request, body)
        )
        return Response.json(written.to_json())

    def apply(self, request: Request) -> Response:
        body = request.json_object()
        parts = _parts(body)
        replace = _flag_arg(body, "replace")
        args = _write_args(request, body)
        if _flag_arg(body, "dry_run"):
            base = args["base_version"]
            if base is not None and base != self.store.version:
                raise StaleVersion(base, self.store.version)
            preview = self.store.preview(apply_documents(parts, replace=replace))
            return Response.json({**preview.to_json(), "dry_run": True})
        written = self.store.apply(parts, replace=replace, **args)
        return Response.json({**written.to_json(), "dry_run": False})

    # --- rollouts --------------------------------------------------------------------------

    def list_rollouts(self, request: Request) -> Response:
        plans = self.rollouts.plans()
        return Response.json({"rollouts": [self.rollouts.view(plans[f]) for f in sorted(plans)]})

    def get_rollout(self, request: Request) -> Response:
        return Response.json(self.rollouts.view(self.rollouts.plan(request.params["flag"])))

    def start_rollout(self, request: Request) -> Response:
        body = request.json_object()
        steps = body.get("steps")
        hold = body.get("hold_seconds")
        if not isinstance(steps, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in steps
        ):
            raise HttpError(400, "'steps' must be a list of whole percentages")
        if isinstance(hold, bool) or not isinstance(hold, int | float) or hold < 0:
            raise HttpError(400, "'hold_seconds' must be a number >= 0")
        try:
            check_steps(tuple(steps))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        args = _write_args(request, body)
        name = request.params["flag"]
        split_flag(self.store.state.flags, name, "a rollout plan")
        try:
            plan, written = self.rollouts.start(
                name,
                tuple(steps),
                float(hold),
                _optional_text(body, "treatment"),
                author=args["author"],
                reason=args["reason"],
            )
        except ValueError as exc:
            if isinstance(exc, InvalidFlags | PlanError):
                raise
            raise HttpError(422, str(exc)) from None
        view = self.rollouts.view(plan)
        view["written"] = written.to_json()
        return Response.json(view)

    def _plan_action(self, action: str) -> Callable[[Request], Response]:
        def handle(request: Request) -> Response:
            body = request.json_object()
            args = _write_args(request, body)
            name = request.params["flag"]
            author, reason = args["author"], args["reason"]
            if action == "pause":
                plan = self.rollouts.pause(name, author=author, reason=reason)
            elif action == "resume":
                plan = self.rollouts.resume(name, author=author, reason=reason)
            else:
                plan, _ = self.rollouts.abort(name, author=author, reason=reason)
            return Response.json(self.rollouts.view(plan))

        return handle


# --- request helpers -----------------------------------------------------------------------


def _flag_version(flags: FlagSet, changed: Mapping[tuple[str, str], int], name: str) -> int:
    """The version in which the flag last changed (0 when unknown)."""
    kind = flags.dialect(name) or FLAG
    return changed.get((kind, name), 0)


def _flagd_context(flags: FlagSet) -> dict[str, Any]:
    """What a flagd flag's answers also depend on: the set's evaluators and settings."""
    return {"$evaluators": dict(flags.table(EVALUATOR)), **flags.table(FLAGD_SET)}


def _summary(
    flags: FlagSet,
    name: str,
    version: int,
    record: VersionRecord | None,
    plans: dict[str, Any],
) -> dict[str, Any]:
    if flags.dialect(name) == FLAGD:
        definition = flags.flagd_flags[name]
        state = "killed" if definition.get("state") == "DISABLED" else "active"
        dial = None
        dialect = "flagd"
        default = definition.get("defaultVariant")
    else:
        definition = flags.flags[name]
        if definition.get("status", "ACTIVE") == "ARCHIVED":
            state = "archived"
        else:
            state = "killed" if definition.get("killed") else "active"
        current = dimmer.current_dial(definition)
        dial = (
            None
            if current is None
            else {"treatment": current.treatment, "percent": current.percent}
        )
        dialect = "split"
        default = definition.get("defaultTreatment")
    plan = plans.get(name)
    return {
        "name": name,
        "dialect": dialect,
        "state": state,
        "dial": dial,
        "default_treatment": default,
        "version": version,
        "changed_at": record.created_at if record else None,
        "author": record.author if record else None,
        "reason": record.reason if record else None,
        "action": record.action if record else None,
        "rollout": None if plan is None else f"{plan.status} step {plan.step_label}",
    }


def _write_args(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """author, reason and base_version of a write."""
    base = body.get("base_version")
    if base is not None and (isinstance(base, bool) or not isinstance(base, int) or base < 0):
        raise HttpError(400, "'base_version' must be an integer >= 0")
    reason = _optional_text(body, "reason") or ""
    named = request.principal.name if request.principal else None
    author = named or _optional_text(body, "author") or "api"
    return {"author": author, "reason": reason, "base_version": base}


def _optional_text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise HttpError(400, f"'{key}' must be a string of at most {MAX_TEXT} characters")
    return value


def _flag_arg(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise HttpError(400, f"'{key}' must be true or false")
    return value


def _int_arg(request: Request, name: str, default: int, maximum: int) -> int:
    text = request.arg(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise HttpError(400, f"'{name}' must be an integer 1..{maximum}")
    return int(text)


def _parts(body: dict[str, Any]) -> list[Part]:
    """The submitted documents, each parsed (InvalidFlags for a shape that is none)."""
    if "documents" in body:
        documents = body["documents"]
        if not isinstance(documents, list) or not documents:
            raise HttpError(400, "'documents' must be a non-empty list")
        parts = []
        for index, item in enumerate(documents):
            if not isinstance(item, dict) or "document" not in item:
                raise HttpError(400, f"documents[{index}] must be {{'source', 'document'}}")
            source = item.get("source") or f"documents[{index}]"
            if not isinstance(source, str):
                raise HttpError(400, f"documents[{index}].source must be a string")
            parts.append(parse_document(item["document"], source))
        return parts
    if "document" not in body:
        raise HttpError(400, "give 'document' (or 'documents')")
    return [parse_document(body["document"], "request")]
