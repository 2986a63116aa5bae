"""deploy/fader.example.toml loads with the current settings and means what it says."""

from __future__ import annotations

from pathlib import Path

from sidecar.config import Address, load_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "fader.example.toml"


def test_the_example_config_loads() -> None:
    settings = load_settings(["--config", str(EXAMPLE)], environ={})
    assert settings.grpc_listen == Address("127.0.0.1", 8013)
    assert settings.snapshot == Path("sidecar/demo/demo.json")
    assert (settings.log_format, settings.impressions_mode) == ("text", "optimized")


def test_flags_and_environment_win_over_it() -> None:
    environ = {"FADER_LOG_LEVEL": "debug"}
    settings = load_settings(["--config", str(EXAMPLE), "--log-format", "json"], environ=environ)
    assert (settings.log_format, settings.log_level) == ("json", "debug")
