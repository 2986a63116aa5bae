"""The real Python OpenFeature OFREP provider (openfeature-provider-ofrep 0.3.0) against a
running sidecar's OFREP listener: every type, a Split flag, not found, type mismatch, a
disabled flag and a missing default variant, and a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.api.test_ofrep import mixed_snapshot
from tests.integration.harness import LOCAL_ANY_PORT, loopback_settings, running_sidecar


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenFeatureClient]:
    tokens: Path = tmp_path_factory.mktemp("ofrep") / "tokens"
    tokens.write_text("t0ken\n")
    settings = loopback_settings(ofrep_listen=LOCAL_ANY_PORT, ofrep_token_file=tokens)
    with running_sidecar(settings, mixed_snapshot()) as running:
        provider = OFREPProvider(
            f"http://{running.sidecar.ofrep_address}",
            headers_factory=lambda: {"Authorization": "Bearer t0ken"},
        )
        api.set_provider(provider, "fader-ofrep")
        yield api.get_client("fader-ofrep")
        api.clear_providers()


def details(client: OpenFeatureClient, kind: str, flag: str, default: Any, **context: Any) -> Any:
    key = context.pop("targetingKey", None)
    return getattr(client, f"get_{kind}_details")(flag, default, EvaluationContext(key, context))


def test_every_type(client: OpenFeatureClient) -> None:
    answer = details(client, "boolean", "enabled", False)
    assert (answer.value, answer.variant, answer.reason) == (True, "on", Reason.STATIC)
    answer = details(client, "string", "greeting", "x", user={"plan": "pro"})
    assert (answer.value, answer.variant, answer.reason) == ("hey", "yo", Reason.TARGETING_MATCH)
    assert answer.flag_metadata == {"team": "shop", "owner": "web"}
    assert details(client, "integer", "limit", 0).value == 10
    assert details(client, "float", "ratio", 0.0).value == 1.0
    assert details(client, "object", "style", {}).value == {"color": "blue"}


def test_a_split_flag(client: OpenFeatureClient) -> None:
    answer = details(client, "string", "banner", "x", targetingKey="u1", plan="pro")
    assert (answer.value, answer.variant, answer.reason) == ("on", "on", Reason.TARGETING_MATCH)
    assert answer.flag_metadata["label"] == "pro plan"


def test_not_found_type_mismatch_disabled_and_no_default(client: OpenFeatureClient) -> None:
    missing = details(client, "string", "no-such-flag", "fallback")
    assert (missing.value, missing.error_code) == ("fallback", ErrorCode.FLAG_NOT_FOUND)
    mismatch = details(client, "integer", "greeting", 7)
    assert (mismatch.value, mismatch.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    floats = details(client, "float", "limit", 0.5)  # an integer flag is not a float flag
    assert floats.error_code == ErrorCode.TYPE_MISMATCH
    disabled = details(client, "boolean", "off-flag", False)
    assert (disabled.value, disabled.reason, disabled.error_code) == (False, Reason.DISABLED, None)
    no_default = details(client, "boolean", "no-default", True)
    assert (no_default.value, no_default.reason) == (True, Reason.DEFAULT)


def test_a_wrong_token_is_refused(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("right\n")
    settings = loopback_settings(ofrep_listen=LOCAL_ANY_PORT, ofrep_token_file=tokens)
    with running_sidecar(settings, mixed_snapshot()) as running:
        wrong = OFREPProvider(
            f"http://{running.sidecar.ofrep_address}",
            headers_factory=lambda: {"Authorization": "Bearer wrong"},
        )
        api.set_provider(wrong, "wrong-token")
        answer = api.get_client("wrong-token").get_boolean_details("enabled", False)
        assert (answer.value, answer.error_code) == (False, ErrorCode.GENERAL)
        api.clear_providers()
