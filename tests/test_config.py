"""`fader serve` settings: flags over environment over config file over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import Address, ConfigError, Settings, build_parser, load_settings


def test_defaults_follow_flagd_ports() -> None:
    settings = load_settings([], environ={})
    assert settings == Settings()
    assert settings.grpc_listen == Address("127.0.0.1", 8013)
    assert settings.mgmt_listen == Address("0.0.0.0", 8014)


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "fader.toml"
    config.write_text(
        'grpc_listen = "127.0.0.1:1"\nshutdown_grace = 9\nlog_level = "debug"\n'
        "max_batch_items = 7\ndemo = true\n"
    )
    environ = {
        "FADER_CONFIG": str(config),
        "FADER_GRPC_LISTEN": "127.0.0.1:2",
        "FADER_SHUTDOWN_GRACE": "3",
    }
    settings = load_settings(["--grpc-listen", "[::1]:3"], environ=environ)
    assert settings.grpc_listen == Address("::1", 3)
    assert str(settings.grpc_listen) == "[::1]:3"
    assert settings.shutdown_grace == 3.0
    assert (settings.log_level, settings.max_batch_items, settings.demo) == ("debug", 7, True)


def test_config_flag_and_off(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('uds = "/run/fader/fader.sock"\nuds_group = "app"\n')
    settings = load_settings(
        ["--config", str(config), "--grpc-listen", "off", "--mgmt-listen", "OFF"], environ={}
    )
    assert settings.grpc_listen is None and settings.mgmt_listen is None
    assert (settings.uds, settings.uds_group) == (Path("/run/fader/fader.sock"), "app")


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (
            ["--grpc-listen", "8013"],
            {},
            "--grpc-listen / FADER_GRPC_LISTEN: '8013' is not HOST:PORT",
        ),
        ([], {"FADER_MAX_ATTRIBUTES": "0"}, "FADER_MAX_ATTRIBUTES: '0' must be a positive integer"),
        ([], {"FADER_DEMO": "maybe"}, "'maybe' is not a boolean"),
        (["--log-level", "loud"], {}, "'loud' is not one of debug"),
        (["--shutdown-grace", "-1"], {}, "must be zero or more seconds"),
        (["--grpc-listen", "off"], {}, "nothing to serve on"),
        (["--demo", "--snapshot", "x.json"], {}, "exclude each other"),
        (["--uds-group", "app"], {}, "--uds-group needs --uds"),
        (["--impressions-mode", "all"], {}, "'all' is not one of optimized, debug, none"),
        (["--telemetry-flush-interval", "0"], {}, "must be more than zero seconds"),
        (["--collector-ca", "ca.pem"], {}, "--collector-ca needs --collector"),
        (
            ["--telemetry-memory-bytes", "1000"],
            {},
            "--telemetry-memory-bytes must hold at least one batch",
        ),
    ],
)
def test_errors_name_the_setting(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_settings(argv, environ=environ)


def test_config_file_errors(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('grpc_lisen = "127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="unknown setting\\(s\\): grpc_lisen"):
        load_settings(["--config", str(typo)], environ={})
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml"):
        load_settings(["--config", str(tmp_path / "missing.toml")], environ={})


def test_every_setting_has_a_flag_and_help() -> None:
    help_text = build_parser().format_help()
    for name in Settings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text
