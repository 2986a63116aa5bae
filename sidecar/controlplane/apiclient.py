"""A small client for the control plane's admin API (``fader flags``, ``fader rollout``, tests).

Standard library only (``urllib``): one request per call, JSON in and out. A refusal
raises ``ApiError`` with the HTTP status and the server's JSON error body; an unreachable
server is ``ApiError`` with status 0.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

DEFAULT_SERVER: Final = "http://127.0.0.1:8018"
SERVER_ENV: Final = "FADER_SERVER"


class ApiError(Exception):
    """The API refused (``status`` 4xx/5xx, ``body`` its JSON) or could not be reached (0)."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body or {}


class ApiClient:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30):
        self.server = (server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
        self.token = token
        self.timeout = timeout

    def get(self, path: str, **query: Any) -> Any:
        pairs = {k: str(v) for k, v in query.items() if v is not None}
        suffix = "?" + urllib.parse.urlencode(pairs) if pairs else ""
        return self.request("GET", path + suffix)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("DELETE", path, body)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)
            except ValueError:
                error = {"error": raw.decode(errors="replace").strip() or exc.reason}
            if not isinstance(error, dict):
                error = {"error": str(error)}
            raise ApiError(exc.code, str(error.get("error", exc.reason)), error) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, f"cannot reach {self.server}: {reason}") from None


def flag_path(name: str, suffix: str = "") -> str:
    return "/api/v1/flags/" + urllib.parse.quote(name, safe="") + suffix
