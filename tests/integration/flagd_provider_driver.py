"""Runs the real OpenFeature flagd provider (RPC mode) for tests/integration/test_flagd_provider.py.

It runs in a process of its own because the provider ships its own generated flagd protos:
protobuf refuses to register `flagd.evaluation.v2.*` twice in one process, and the test
process has Fader's. So this script imports nothing from Fader.

The provider is configured as a user would configure it: FLAGD_HOST, FLAGD_PORT,
FLAGD_RESOLVER=rpc (and FLAGD_DEADLINE_MS) in the environment. Protocol, one JSON object a
line: it prints {"event": "ready"} once the provider is ready, then answers each request
{"type": "boolean|string|integer|float|object", "flag", "default", "key", "attributes"} on
stdin with {"value", "reason", "variant", "error_code"}, and prints
{"event": "configuration_changed", "flags": [...]} whenever the provider reports one.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent

_output = threading.Lock()


def emit(message: dict[str, Any]) -> None:
    with _output:
        print(json.dumps(message), flush=True)


def on_change(details: EventDetails) -> None:
    emit({"event": "configuration_changed", "flags": sorted(details.flags_changed or [])})


def main() -> int:
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    api.set_provider_and_wait(FlagdProvider())
    emit({"event": "ready"})
    client = api.get_client()
    for line in sys.stdin:
        request = json.loads(line)
        evaluate = getattr(client, f"get_{request['type']}_details")
        context = EvaluationContext(request["key"], request.get("attributes", {}))
        details = evaluate(request["flag"], request["default"], context)
        emit(
            {
                "value": details.value,
                "reason": str(details.reason) if details.reason is not None else None,
                "variant": details.variant,
                "error_code": str(details.error_code) if details.error_code else None,
            }
        )
    api.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
