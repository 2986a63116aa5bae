"""clients/node/check.mjs: the stock Node providers against a real sidecar.

- `@openfeature/flagd-provider` in `in-process` mode, fed by Fader's flagd sync, agrees with
  Fader's own answers (flagd.evaluation.v2 over gRPC) on 1,000 random contexts over the
  flagd testbed's flags, then sees a snapshot swap. Its flagd-core evaluates `fractional` as
  v2, Fader's default.
- `@openfeature/ofrep-provider` resolves every type, a Split flag, not found, type mismatch
  and a disabled flag over OFREP, with a bearer token.
- A wrong expected answer makes the checker exit 1 (so a passing run means something).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.clients import examples
from tests.clients.examples import (
    answers,
    assert_all_right,
    assert_in_process_agrees_and_follows_a_swap,
    assert_one_wrong,
    needs,
    ofrep_env,
    run,
)
from tests.integration.harness import RunningSidecar

pytestmark = needs("node", "npm", to="run the Node example")
SEED = 1202
CHECK = ["node", "check.mjs"]


def check(kind: str, flag: str, default: Any, context: dict[str, Any], expect: dict[str, Any]):
    """A check for check.mjs, where integers and floats are both "number"."""
    node_kind = "number" if kind in ("integer", "float") else kind
    return examples.check(node_kind, flag, default, context, expect)


def test_in_process_agrees_on_random_contexts_and_follows_a_swap(
    installed: Path, synced: RunningSidecar
) -> None:
    env = {"FLAGD_RESOLVER": "in-process", "FLAGD_DEADLINE_MS": "5000"}
    assert_in_process_agrees_and_follows_a_swap(
        [*CHECK, "in-process"], installed, env, synced, seed=SEED, make_check=check
    )


OFREP_CHECKS = [
    *answers(check),
    # a disabled flag answers the code default (ofrep-provider 0.1.3 requires a "value" in
    # every success body, so it reports the spec's value-less DISABLED answer as an error)
    check("boolean", "off-flag", True, {}, {"value": True}),
]


def test_ofrep_provider_resolves_everything(installed: Path, mixed: RunningSidecar) -> None:
    code, out = run([*CHECK, "ofrep"], installed, ofrep_env(mixed), *OFREP_CHECKS)
    assert_all_right(code, out, len(OFREP_CHECKS))


def test_a_wrong_answer_fails_the_checker(installed: Path, mixed: RunningSidecar) -> None:
    assert_one_wrong([*CHECK, "ofrep"], installed, ofrep_env(mixed))
