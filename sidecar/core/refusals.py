"""Why a request is refused, and the one table that says how every lane reports it.

A refusal is raised wherever it is found (decoding, limits, the event queue) and turned into
the lane's own answer in one place per lane: gRPC aborts with the status named by `code`, the
fast lane sends an error frame with the same name, HTTP lanes answer `http_status`. Keeping
the table here, beside the exceptions, is what stops the lanes from drifting apart.

| refusal          | code               | HTTP |
|------------------|--------------------|------|
| BadRequest       | INVALID_ARGUMENT   | 400  |
| NotReady         | UNAVAILABLE        | 503  |
| QueueFull        | RESOURCE_EXHAUSTED | 429  |
| NotKept          | FAILED_PRECONDITION| 412  |
| TooManyStreams   | RESOURCE_EXHAUSTED | 429  |
"""

from __future__ import annotations

NOT_READY_MESSAGE = "no snapshot is active yet"


class Refusal(Exception):
    """A request the sidecar does not serve; `code` is a gRPC status name."""

    code: str = "UNKNOWN"
    http_status: int = 500


class BadRequest(Refusal, ValueError):
    """Malformed or over a limit; the message names the field (e.g. `items[3].key`)."""

    code = "INVALID_ARGUMENT"
    http_status = 400


class NotReady(Refusal):
    """No snapshot yet: clients turn this into "control"."""

    code = "UNAVAILABLE"
    http_status = 503


class QueueFull(Refusal):
    """No room for an event in memory or the spool."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 429


class NotKept(Refusal):
    """Events sent to a sidecar with nowhere to send them (no collector configured)."""

    code = "FAILED_PRECONDITION"
    http_status = 412


class TooManyStreams(Refusal):
    """The open-stream limit (--max-watch-streams) is reached."""

    code = "RESOURCE_EXHAUSTED"
    http_status = 429
