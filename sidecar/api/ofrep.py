"""OFREP, the OpenFeature Remote Evaluation Protocol (v0.3.0), over HTTP on `--ofrep-listen`.

`POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag, `POST /ofrep/v1/evaluate/flags` every
flag of the selected flag set (the `Flagd-Selector` header, as on the flagd lanes). The body is
`{"context": {"targetingKey": ..., ...}}`; an empty body is an empty context. Both dialects:

- a flagd-dialect flag answers its variant's typed value, the reason its label maps to, its
  metadata (flag-set metadata under the flag's); its rules read the context whole;
- a Split flag answers its treatment as `value` and `variant`, with `metadata.label`,
  `metadata.version` and `metadata.config` (the treatment's config, a JSON string) and the
  reasons of the flagd lanes; it needs a `targetingKey` (else 400 TARGETING_KEY_MISSING) and
  flat attributes (else 400 INVALID_CONTEXT).

What clients need (sdk-surfaces: the Python and JavaScript providers): `variant` is always
sent (null when there is none: a disabled flag, a missing default variant), `value` is then
left out (the client's default applies); a number flag with any fractional variant sends
every value as a float (`1.0`, never `1`); every body is `application/json`.

Errors: 404 `{key, errorCode: FLAG_NOT_FOUND, errorDetails}`; 400 with PARSE_ERROR (a body
that is not JSON, a flag whose targeting cannot be evaluated), TARGETING_KEY_MISSING,
INVALID_CONTEXT or GENERAL; 401 without a valid bearer token when `--ofrep-token-file` is set;
503 before the first snapshot. Never 429: a client that gets one serves defaults until
`Retry-After`, so a rate limit would silently turn flags off.

Impressions: a single-flag call is an evaluation the application asked for, so it is recorded
like any lookup. The bulk call is a prefetch (static-context providers call it at start-up
and on every context change, and cache the answers): recording it would count every flag as
exposed to every user whether or not the application ever read it, so it is not recorded.

The bulk answer has an `ETag`; a request whose `If-None-Match` matches gets 304 without a
body. The tag is a hash of the snapshot version, the selector and the canonical context, so a
304 costs no evaluation, except when a selected flagd flag reads `$flagd.timestamp` (its
answer changes with time alone): then the tag is a hash of the answer itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from time import perf_counter
from typing import Any

from fader.rules.model import CompiledFlag
from fader.rules.result import Decision
from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds
from fader.snapshot.snapshot import Snapshot
from fader.snapshot.text import lone_surrogate

from sidecar.api import flagd_mapping as mapping
from sidecar.api.flagd_connect import FlagdConnect, is_connect, unary_error
from sidecar.auth import TokenFile
from sidecar.config import Address
from sidecar.core import Core
from sidecar.core.attributes import AttributePolicy
from sidecar.core.refusals import BadRequest, NotReady, Refusal
from sidecar.core.requests import check_key, check_name
from sidecar.plumbing.http import HttpServer, Request, Response

PREFIX = "/ofrep/v1/evaluate/flags"
JSON_HEADERS = [("Content-Type", "application/json")]
TARGETING_KEY = "targetingKey"

PARSE_ERROR = "PARSE_ERROR"
TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
INVALID_CONTEXT = "INVALID_CONTEXT"
GENERAL = "GENERAL"
FLAG_NOT_FOUND = "FLAG_NOT_FOUND"


class OfrepError(Exception):
    """An answer other than 200: its status, OFREP error code and details."""

    def __init__(self, status: int, code: str | None, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.code = code
        self.details = details


def _json(status: int, body: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return Response(status, data, [*JSON_HEADERS, *(extra or ())])


def _error(err: OfrepError, key: str | None) -> Response:
    body: dict[str, Any] = {}
    if key is not None:
        body["key"] = key
    if err.code is not None:
        body["errorCode"] = err.code
    body["errorDetails"] = err.details
    return _json(err.status, body)


# --- the context -------------------------------------------------------------------------------


def read_context(body: bytes) -> dict[str, Any]:
    """The request's `context` object (empty when there is no body or no context)."""
    if not body.strip():
        return {}
    if json_depth_exceeds(body):  # json.loads recurses: refuse before it sees the body
        raise OfrepError(400, PARSE_ERROR, f"the body nests more than {MAX_DEPTH} levels deep")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OfrepError(400, PARSE_ERROR, f"the body is not JSON: {exc}") from None
    not_text = lone_surrogate(body, document)
    if not_text is not None:
        raise OfrepError(400, PARSE_ERROR, not_text)
    if not isinstance(document, dict):
        raise OfrepError(400, INVALID_CONTEXT, "the body must be a JSON object")
    context = document.get("context")
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise OfrepError(400, INVALID_CONTEXT, "context must be an object")
    return context


def _whole_value(
    value: Any, where: str, policy: AttributePolicy, budget: list[int], depth: int
) -> Any:
    """A JSON value for a flagd-dialect rule, bounded as the gRPC lane bounds it."""
    budget[0] -= 1
    if budget[0] < 0:
        raise BadRequest(f"{where}: the context holds too many values")
    if depth > mapping.MAX_CONTEXT_DEPTH:
        raise BadRequest(f"{where}: nested deeper than {mapping.MAX_CONTEXT_DEPTH} levels")
    if isinstance(value, str):
        if len(value) > policy.max_size:
            raise policy.too_long("context", where, len(value))
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {
            k: _whole_value(v, f"{where}.{k}", policy, budget, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _whole_value(v, f"{where}[{i}]", policy, budget, depth + 1) for i, v in enumerate(value)
        ]
    return value


def typed_lookup(
    context: dict[str, Any], policy: AttributePolicy
) -> tuple[str, dict[str, Any] | None]:
    """(key, data) for a flagd-dialect flag: the context whole; the key may be absent."""
    policy.check_count(len(context) - (TARGETING_KEY in context), "context")
    budget = [policy.max_attributes * 16]
    data = {
        name: _whole_value(value, f"context[{name!r}]", policy, budget, 0)
        for name, value in context.items()
        if value is not None
    }
    key = data.get(TARGETING_KEY)
    if isinstance(key, str) and key:
        check_key(key, f"context.{TARGETING_KEY}")
        return key, data or None
    return "", data or None


def _integral(value: Any) -> Any:
    """A whole float becomes an int (Split's numeric matchers compare integers), as on the
    flagd gRPC lane, where every number arrives as a double."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def split_lookup(
    context: dict[str, Any], policy: AttributePolicy
) -> tuple[str, dict[str, object] | None]:
    """(key, attributes) for a Split flag: a targeting key, flat attributes."""
    key = context.get(TARGETING_KEY)
    if not isinstance(key, str) or not key:
        raise OfrepError(400, TARGETING_KEY_MISSING, "context.targetingKey: a string is required")
    try:
        check_key(key, f"context.{TARGETING_KEY}")
        values = {
            name: _integral(value)
            for name, value in context.items()
            if name != TARGETING_KEY and value is not None
        }
        return key, policy.admit(values, "context")
    except BadRequest as err:
        raise OfrepError(400, INVALID_CONTEXT, str(err)) from None


# --- one answer --------------------------------------------------------------------------------


def _floats(flag: CompiledFlag) -> bool:
    """A number flag with any fractional variant is a float flag: all its values go out as
    floats, so that a client asking for a float never gets `1`."""
    values = flag.values or {}
    return any(isinstance(v, float) for v in values.values()) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()
    )


def answer(flag: CompiledFlag, result: Decision, version: int) -> dict[str, Any]:
    """The success body of one flag; OfrepError for an evaluation flagd reports as an error."""
    try:
        reason = mapping.reason(flag, result)
    except mapping.FlagdError as err:
        code = FLAG_NOT_FOUND if err.error_code == mapping.FLAG_NOT_FOUND else err.error_code
        raise OfrepError(404 if code == FLAG_NOT_FOUND else 400, code, str(err)) from None
    body: dict[str, Any] = {"key": flag.name, "reason": reason, "variant": None}
    if mapping.has_value(flag, result):
        body["variant"] = result.treatment
        if flag.values is not None:
            value = flag.values[result.treatment]
            body["value"] = float(value) if _floats(flag) else value
        else:
            body["value"] = result.treatment
    metadata = mapping.metadata(result, version, flag)
    if flag.values is None and result.config is not None:
        metadata["config"] = result.config
    if metadata:
        body["metadata"] = {k: v for k, v in metadata.items() if not _bad_number(v)}
    return body


def _bad_number(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


# --- the lane ----------------------------------------------------------------------------------


class Ofrep:
    """The OFREP handler: HTTP requests in, JSON answers out, through the evaluation core."""

    def __init__(self, core: Core, tokens: TokenFile | None = None) -> None:
        self._evaluator = core.evaluator
        self._policy = core.policy
        self._max_items = core.limits.max_batch_items
        self._tokens = tokens

    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return _json(404, {"errorDetails": f"no such endpoint: {request.path}"})
        if request.method != "POST":
            return _json(
                405, {"errorDetails": "OFREP evaluations are POST requests"}, [("Allow", "POST")]
            )
        if self._tokens is not None and not self._tokens.allows(
            [("authorization", request.headers.get("authorization", ""))]
        ):
            return _json(401, {"errorDetails": "a valid bearer token is required"})
        if path == PREFIX:
            return self._bulk(request)
        return self._single(request, path[len(PREFIX) + 1 :])

    def _selection(self, request: Request) -> str | None:
        try:
            return mapping.flag_set(request.headers.get("flagd-selector"))
        except BadRequest as err:
            raise OfrepError(400, GENERAL, str(err)) from None

    def _single(self, request: Request, key: str) -> Response:
        started = perf_counter()
        try:
            check_name(key, "flag key")
            selected = self._selection(request)
            snap = self._evaluator.snapshot()
            flag = snap.flags.get(key)
            if flag is None or not mapping.in_flag_set(flag, selected):
                raise OfrepError(404, FLAG_NOT_FOUND, f"flag {key!r} not found")
            context = read_context(request.body)
            lookup_key, attributes = self._lookup(flag, context)
            [(_, _, _, result)] = self._evaluator.evaluate(
                snap, [(lookup_key, None, key, attributes)], "ofrep.Evaluate", started
            )
            return _json(200, answer(flag, result, snap.version))
        except OfrepError as err:
            return _error(err, key)
        except Refusal as err:
            return self._refused(err, key)

    def _lookup(self, flag: CompiledFlag, context: dict[str, Any]) -> tuple[str, Any]:
        try:
            if flag.values is not None:
                return typed_lookup(context, self._policy)
            return split_lookup(context, self._policy)
        except BadRequest as err:
            raise OfrepError(400, INVALID_CONTEXT, str(err)) from None

    def _refused(self, err: Refusal, key: str | None) -> Response:
        if isinstance(err, NotReady):
            return _error(OfrepError(503, None, str(err)), key)
        code = INVALID_CONTEXT if isinstance(err, BadRequest) else GENERAL
        return _error(OfrepError(err.http_status, code, str(err)), key)

    def _bulk(self, request: Request) -> Response:
        started = perf_counter()
        try:
            selected = self._selection(request)
            snap = self._evaluator.snapshot()
            context = read_context(request.body)
            names = list(snap.flags_in_sets((selected,)) if selected else snap.flag_names())
            if len(names) > self._max_items:
                raise OfrepError(
                    400, GENERAL, f"{len(names)} flags, at most {self._max_items} in one bulk call"
                )
            clock = self._reads_time(snap, names)
            tag = None if clock else _context_tag(snap.version, selected, context)
            if tag is not None and _matches(request, tag):
                return Response(304, b"", [("ETag", tag)])
            body = self._evaluate_all(snap, names, context, started)
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            tag = tag or '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            if _matches(request, tag):
                return Response(304, b"", [("ETag", tag)])
            return Response(200, data, [*JSON_HEADERS, ("ETag", tag)])
        except OfrepError as err:
            return _error(err, None)
        except Refusal as err:
            return self._refused(err, None)

    @staticmethod
    def _reads_time(snap: Snapshot, names: list[str]) -> bool:
        flagd = snap.flagd
        return flagd is not None and not flagd.clock_free(names)

    def _evaluate_all(
        self, snap: Snapshot, names: list[str], context: dict[str, Any], started: float
    ) -> dict[str, Any]:
        """Every flag's answer or failure; a Split flag without a targeting key is a failure
        of its own (TARGETING_KEY_MISSING), not of the whole call."""
        failures: dict[str, dict[str, Any]] = {}
        lookups = []
        typed: tuple[str, Any] | None = None
        split: tuple[str, Any] | None = None
        for name in names:
            flag = snap.flags[name]
            try:
                if flag.values is not None:
                    typed = typed or self._lookup(flag, context)
                    key, attributes = typed
                else:
                    split = split or self._lookup(flag, context)
                    key, attributes = split
            except OfrepError as err:
                failures[name] = {"key": name, "errorCode": err.code, "errorDetails": err.details}
                continue
            lookups.append((key, None, name, attributes))
        answers = self._evaluator.evaluate(
            snap, lookups, "ofrep.EvaluateBulk", started, record=False
        )
        results: Mapping[str, Decision] = {name: result for _, _, name, result in answers}
        flags: list[dict[str, Any]] = []
        for name in names:
            if name in failures:
                flags.append(failures[name])
                continue
            try:
                flags.append(answer(snap.flags[name], results[name], snap.version))
            except OfrepError as err:
                flags.append({"key": name, "errorCode": err.code, "errorDetails": err.details})
        return {"flags": flags, "metadata": {"version": snap.version}}


def _context_tag(version: int, selected: str | None, context: dict[str, Any]) -> str:
    canonical = json.dumps([version, selected, context], sort_keys=True, separators=(",", ":"))
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


def _matches(request: Request, tag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    return wanted.strip() == "*" or tag in (t.strip().removeprefix("W/") for t in wanted.split(","))


class OfrepServer:
    """The OFREP lane on its own HTTP listener, with flagd's evaluation API over Connect
    (`sidecar.api.flagd_connect`) beside it when `connect` is given."""

    def __init__(
        self,
        core: Core,
        tokens: TokenFile | None = None,
        connect: FlagdConnect | None = None,
        connect_tokens: TokenFile | None = None,
    ) -> None:
        self.handler = Ofrep(core, tokens)
        self._connect = connect
        # flagd's API needs the evaluation port's tokens (--grpc-token-file), wherever served
        self._connect_tokens = connect_tokens
        self._http = HttpServer(self._route, core.limits.max_message_bytes)
        self.address: Address | None = None

    def _route(self, request: Request) -> Response:
        if self._connect is None or not is_connect(request.path):
            return self.handler.handle(request)
        if self._connect_tokens is not None and not self._connect_tokens.allows(
            [("authorization", request.headers.get("authorization", ""))]
        ):
            return unary_error("UNAUTHENTICATED", "a valid bearer token is required")
        return self._connect.handle(request)

    async def start(self, address: Address) -> None:
        _host, port = await self._http.start(address.host, address.port)
        self.address = Address(address.host, port)

    async def stop(self, grace: float) -> None:
        await self._http.stop()
