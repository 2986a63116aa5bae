"""The control plane's HTTP listener: a small router any control-plane module registers on.

``Router.add(method, "/api/v1/flags/{flag}", handler, role=...)`` adds a route; the
handler gets a ``Request`` (path parameters, query, body, the caller) and returns a
``Response``, or raises ``HttpError`` for a clear 4xx. Roles: ``public`` (no token),
``viewer`` and ``editor`` (``apitokens``). Without a tokens file every caller is an editor
(the listener defaults to loopback). The OpenAPI 3 document at ``/openapi.json`` is built
from the registered routes, so a module's routes are described as soon as they exist.

The server is the standard library's threading HTTP server in a daemon thread: the API is
for operators and tools, not for traffic. No request can crash it: an unexpected error is
logged and answered 500.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from fader.snapshot.depth import MAX_DEPTH, json_depth_exceeds
from fader.snapshot.text import lone_surrogate

from sidecar.config import Address
from sidecar.controlplane.apitokens import EDITOR, Principal, RoleTokens

log = logging.getLogger(__name__)

PUBLIC: Final = "public"
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
JSON_TYPE: Final = "application/json"


class HttpError(Exception):
    """A refusal with its status, a message, and extra JSON fields for the body."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    principal: Principal | None

    def json(self) -> Any:
        """The body as JSON (an empty body is ``{}``); 400 when it is not JSON."""
        if not self.body.strip():
            return {}
        if json_depth_exceeds(self.body):
            raise HttpError(
                400, f"the request body nests more than {MAX_DEPTH} levels deep (the nesting limit)"
            )
        try:
            document = json.loads(self.body)
        except UnicodeDecodeError as exc:
            raise HttpError(
                400, f"the request body is not UTF-8 text (byte offset {exc.start})"
            ) from None
        except ValueError as exc:
            raise HttpError(400, f"the request body is not JSON: {exc}") from None
        not_text = lone_surrogate(self.body, document)
        if not_text is not None:
            raise HttpError(400, f"the request body is not text: {not_text}")
        return document

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return body

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def json(value: Any, status: int = 200) -> Response:
        return Response(status, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())

    @staticmethod
    def text(text: str, status: int = 200, content_type: str = "text/plain") -> Response:
        return Response(status, text.encode(), content_type)


Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    pattern: str
    handler: Handler
    role: str
    summary: str
    request_schema: dict[str, Any] | None
    response_schema: dict[str, Any] | None
    errors: tuple[int, ...]
    regex: re.Pattern[str]
    tag: str


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Router:
    """Routes by method and path pattern (``{name}`` matches one path segment)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._lock = threading.Lock()

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        role: str,
        summary: str,
        request_schema: dict[str, Any] | None = None,
        response_schema: dict[str, Any] | None = None,
        errors: tuple[int, ...] = (),
        tag: str = "fader",
    ) -> None:
        """Register a route; ``role`` is ``public``, ``viewer`` or ``editor``."""
        regex = _compile(pattern)
        route = Route(
            method.upper(),
            pattern,
            handler,
            role,
            summary,
            request_schema,
            response_schema,
            errors,
            regex,
            tag,
        )
        with self._lock:
            if any(r.method == route.method and r.pattern == pattern for r in self.routes):
                raise ValueError(f"route {method} {pattern} registered twice")
            self.routes.append(route)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method path``; HttpError 404 (no such path) or 405."""
        allowed: list[str] = []
        with self._lock:
            routes = list(self.routes)
        for route in routes:
            found = route.regex.match(path)
            if found is None:
                continue
            if route.method == method:
                params = {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}
                return route, params
            allowed.append(route.method)
        if allowed:
            raise HttpError(405, f"{method} is not allowed on {path}", allowed=sorted(allowed))
        raise HttpError(404, f"no such path: {path}")

    def openapi(self, title: str, version: str) -> dict[str, Any]:
        """An OpenAPI 3.0 document describing every registered route."""
        paths: dict[str, dict[str, Any]] = {}
        for route in self.routes:
            operation: dict[str, Any] = {
                "summary": route.summary,
                "tags": [route.tag],
                "operationId": f"{route.method.lower()}_{_operation_name(route.pattern)}",
                "responses": _responses(route),
            }
            names = _PARAM.findall(route.pattern)
            if names:
                operation["parameters"] = [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in names
                ]
            if route.request_schema is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {JSON_TYPE: {"schema": route.request_schema}},
                }
            if route.role != PUBLIC:
                operation["security"] = [{"bearer": []}]
                operation["description"] = f"Needs the {route.role} role."
            paths.setdefault(route.pattern, {})[route.method.lower()] = operation
        return {
            "openapi": "3.0.3",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": {"Error": ERROR_SCHEMA},
            },
        }


ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {
        "error": {"type": "string"},
        "status": {"type": "integer"},
        "errors": {
            "type": "array",
            "description": "validation errors (422): each with its flag and JSON path",
            "items": {
                "type": "object",
                "properties": {
                    "source": {"type": "string"},
                    "flag": {"type": "string", "nullable": True},
                    "path": {"type": "string"},
                    "message": {"type": "string"},
                    "text": {"type": "string"},
                },
            },
        },
    },
}

_ERROR_TEXT: Final = {
    400: "malformed request",
    401: "missing or unknown bearer token",
    403: "the token's role may not do this",
    404: "no such flag, version or plan",
    409: "stale base version, or a state that does not allow it",
    422: "the change would leave invalid flags; nothing was written",
}


def _compile(pattern: str) -> re.Pattern[str]:
    """``/a/{x}/b`` -> a regex with the named group ``x`` matching one path segment."""
    parts, last = [], 0
    for match in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[last : match.start()]))
        parts.append(f"(?P<{match.group(1)}>[^/]+)")
        last = match.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("^" + "".join(parts) + "$")


def _responses(route: Route) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if route.response_schema is not None:
        ok["content"] = {JSON_TYPE: {"schema": route.response_schema}}
    responses: dict[str, Any] = {"200": ok}
    codes = set(route.errors)
    if route.request_schema is not None:
        codes.add(400)
    if route.role != PUBLIC:
        codes.update((401, 403) if route.role == EDITOR else (401,))
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _ERROR_TEXT.get(code, "error"),
            "content": {JSON_TYPE: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _operation_name(pattern: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", pattern).strip("_") or "root"


class WebServer:
    """Serves a Router on ``address`` from a daemon thread."""

    def __init__(self, address: Address, router: Router, tokens: RoleTokens | None) -> None:
        self.router = router
        self.tokens = tokens
        self._httpd = ThreadingHTTPServer((address.host, address.port), _handler_class(self))
        self._httpd.daemon_threads = True
        self.address = Address(address.host, self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), daemon=True, name="http"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def principal(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller, by bearer token; everyone is an editor when no tokens are set."""
        if self.tokens is None:
            return Principal(EDITOR)
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.tokens.principal(token.strip().encode())

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        url = urllib.parse.urlsplit(target)
        try:
            route, params = self.router.match(method, url.path)
            principal = self.principal(headers)
            if route.role != PUBLIC:
                if principal is None:
                    raise HttpError(401, "missing or unknown bearer token")
                if not principal.may(route.role):
                    raise HttpError(
                        403, f"this needs the {route.role} role (token: {principal.role})"
                    )
            request = Request(
                method, url.path, params, urllib.parse.parse_qs(url.query), headers, body, principal
            )
            return route.handler(request)
        except HttpError as exc:
            return error_response(exc)
        except Exception:
            log.exception("HTTP %s %s failed", method, url.path)
            return error_response(HttpError(500, "internal error (see the control plane's log)"))


def error_response(exc: HttpError) -> Response:
    response = Response.json(
        {"error": exc.message, "status": exc.status, **exc.details}, exc.status
    )
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="fader"'
    return response


def _handler_class(server: WebServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._send(error_response(HttpError(413, f"body larger than {MAX_BODY_BYTES} B")))
                self.close_connection = True
                return
            body = self.rfile.read(length) if length > 0 else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            self._send(server.handle(self.command, self.path, headers, body))

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def _send(self, response: Response) -> None:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler
