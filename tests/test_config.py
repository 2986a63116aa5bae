"""`fader serve` settings: flags over environment over config file over defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fader.snapshot.limits import SnapshotLimits

from sidecar.config import (
    GROUPS,
    SETTINGS,
    TABLE_BEGIN,
    TABLE_END,
    Address,
    ConfigError,
    Settings,
    build_parser,
    load_settings,
    markdown_table,
    with_markdown_table,
)
from sidecar.limits import RequestLimits

REPO = Path(__file__).resolve().parents[1]


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
            "--grpc-listen: '8013' is not HOST:PORT",
        ),
        ([], {"FADER_MAX_ATTRIBUTES": "0"}, "FADER_MAX_ATTRIBUTES: '0' must be a positive integer"),
        ([], {"FADER_DEMO": "maybe"}, "'maybe' is not a boolean"),
        (["--max-attributes", "many"], {}, "^--max-attributes: 'many' is not a whole number$"),
        ([], {"FADER_MAX_ATTRIBUTES": "many"}, "^FADER_MAX_ATTRIBUTES: 'many' is not a whole"),
        (["--telemetry-flush-interval", "abc"], {}, "'abc' is not a number$"),
        (["--shutdown-grace", "nan"], {}, "'nan' is not a finite number$"),
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
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml: cannot read: No such"):
        load_settings(["--config", str(tmp_path / "missing.toml")], environ={})
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("max_attributes = 'many'\n")
    with pytest.raises(ConfigError, match=r"wrong\.toml: max_attributes: 'many' is not a whole"):
        load_settings(["--config", str(wrong)], environ={})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x84\x00")
    with pytest.raises(ConfigError, match=r"binary\.toml: not TOML"):
        load_settings(["--config", str(binary)], environ={})


def test_every_setting_has_a_flag_and_help() -> None:
    help_text = build_parser().format_help()
    for name in Settings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text


def test_help_shows_the_groups_and_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: argparse wraps at hyphens
    help_text = build_parser().format_help()
    for group in GROUPS:
        assert f"\n{group.title}:\n" in help_text
    for item in SETTINGS:
        assert f"{item.spec.help} (default: {item.shown_default})" in help_text, item.name
    assert "(default: 127.0.0.1:8013)" in help_text and "(default: 65536)" in help_text


def test_every_field_is_declared_with_its_flag_variable_and_key(tmp_path: Path) -> None:
    """Non-default values given through each source come back in the field of that name."""
    assert [item.name for item in SETTINGS] == list(Settings.__dataclass_fields__)
    names = {item.name: (item.flag, item.env) for item in SETTINGS}
    assert names["grpc_listen"] == ("--grpc-listen", "FADER_GRPC_LISTEN")
    assert names["control_plane_token_file"] == (
        "--control-plane-token-file",
        "FADER_CONTROL_PLANE_TOKEN_FILE",
    )
    config = tmp_path / "c.toml"
    config.write_text('max_flags = 7\ncollector = "c:1"\n')
    settings = load_settings(
        ["--max-segment-keys", "9"],
        environ={"FADER_CONFIG": str(config), "FADER_SPOOL_MAX_BYTES": "11"},
    )
    assert (settings.max_flags, settings.collector) == (7, "c:1")
    assert (settings.max_segment_keys, settings.spool_max_bytes) == (9, 11)


def test_request_and_snapshot_limits_come_from_the_settings() -> None:
    settings = load_settings(
        [
            "--max-attributes", "3", "--max-attribute-size", "40", "--max-batch-items", "5",
            "--max-watch-streams", "6", "--max-message-bytes", "7000", "--max-flags", "8",
        ],
        environ={},
    )  # fmt: skip
    assert settings.request_limits() == RequestLimits(
        max_attributes=3,
        max_attribute_size=40,
        max_batch_items=5,
        max_watch_streams=6,
        max_message_bytes=7000,
    )
    assert settings.snapshot_limits().max_flags == 8
    # the defaults are the limits' own
    assert Settings().request_limits() == RequestLimits()
    assert Settings().snapshot_limits() == SnapshotLimits()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--collector", "c:1", "--collector-cert", "c.pem"], "go together"),
        (
            ["--collector", "c:1", "--collector-cert", "c", "--collector-key", "k"],
            "--collector-cert \\(mTLS\\) needs --collector-ca",
        ),
        (["--collector-cert", "c", "--collector-key", "k"], "--collector-cert needs --collector"),
        (["--control-plane-token-file", "t"], "--control-plane-token-file needs --control-plane"),
        (["--admin-token-file", "t"], "--admin-token-file needs --admin-listen"),
        (["--admin-listen", "0.0.0.0:1"], "is not a loopback address"),
    ],
)
def test_each_group_checks_its_combinations(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(argv, environ={})


def test_readme_settings_table_is_rendered_from_the_declaration() -> None:
    readme = (REPO / "README.md").read_text()
    current = readme[readme.index(TABLE_BEGIN) + len(TABLE_BEGIN) : readme.index(TABLE_END)]
    assert current == "\n" + markdown_table() + "\n", (
        "README.md's settings table is out of date: run python tools/settings_table.py"
    )
    for item in SETTINGS:
        assert f"`{item.env}`" in current


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_the_table_tool_rewrites_a_stale_table_and_checks(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\n{TABLE_BEGIN}| old | table |\n{TABLE_END}\nafter\n")
    tool = "tools/settings_table.py"
    assert _run(tool, "--check", "--readme", str(stale)).returncode == 1
    assert _run(tool, "--readme", str(stale)).returncode == 0
    assert stale.read_text() == with_markdown_table(stale.read_text())
    assert "| old | table |" not in stale.read_text() and stale.read_text().endswith("after\n")
    assert _run(tool, "--check", "--readme", str(stale)).returncode == 0
    assert _run(tool, "--check").returncode == 0  # the repository's README


def test_the_markdown_command() -> None:
    proc = _run("-m", "sidecar.config", "--markdown")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == markdown_table()
