"""Settings for `fader serve`: command-line flags, `FADER_*` environment variables, a config file.

Every setting is declared once in `SETTINGS`; the flag, the environment variable and the
config-file key are derived from its name, so the three sources can never drift apart.
Precedence, highest first: flag, environment, config file (TOML), built-in default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.plumbing.channels import ChannelSecurity

ENV_PREFIX = "FADER_"
OFF = "off"
IMPRESSIONS_MODES = ("optimized", "debug", "none")


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one."""


@dataclass(frozen=True)
class Address:
    """A TCP listen address; `port` 0 asks the kernel for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    snapshot: Path | None = None
    demo: bool = False
    grpc_listen: Address | None = Address("127.0.0.1", 8013)
    uds: Path | None = None
    uds_group: str | None = None
    fastlane_uds: Path | None = None
    mgmt_listen: Address | None = Address("0.0.0.0", 8014)
    shutdown_grace: float = 5.0
    log_level: str = "info"
    max_concurrent_rpcs: int = 4096
    max_message_bytes: int = 4 * 1024 * 1024
    max_attributes: int = 256
    max_batch_items: int = 10_000
    control_plane: str | None = None
    control_plane_ca: Path | None = None
    control_plane_token_file: Path | None = None
    sidecar_id: str | None = None
    sidecar_labels: tuple[tuple[str, str], ...] = ()
    cache_dir: Path | None = None
    admin_listen: Address | None = None
    admin_token_file: Path | None = None
    max_staleness: float = 0.0
    collector: str | None = None
    collector_ca: Path | None = None
    collector_token_file: Path | None = None
    impressions_mode: str = "optimized"
    impressions_observer_size: int = 100_000
    telemetry_batch_records: int = 5_000
    telemetry_batch_bytes: int = 1024 * 1024
    telemetry_flush_interval: float = 10.0
    telemetry_memory_bytes: int = 32 * 1024 * 1024
    telemetry_flush_timeout: float = 5.0
    spool_dir: Path | None = None
    spool_max_bytes: int = 256 * 1024 * 1024
    # Hardening: signed snapshots, size limits, TLS and tokens (README "Security").
    trusted_keys: tuple[tuple[str | None, Path], ...] = ()
    max_snapshot_bytes: int = 256 * 1024 * 1024
    max_flags: int = 50_000
    max_segment_keys: int = 5_000_000
    max_attribute_size: int = 65_536
    max_watch_streams: int = 1024
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    admin_client_ca: Path | None = None
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    grpc_client_ca: Path | None = None
    grpc_token_file: Path | None = None
    control_plane_cert: Path | None = None
    control_plane_key: Path | None = None
    collector_cert: Path | None = None
    collector_key: Path | None = None


def parse_address(text: str) -> Address | None:
    """`HOST:PORT`, `[V6]:PORT` or `off`."""
    if text.strip().lower() == OFF:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT (or 'off')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Address(host, int(port))


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{text!r} is not a boolean (true/false)")


def parse_positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ConfigError(f"{text!r} must be a positive integer")
    return value


def parse_grace(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ConfigError(f"{text!r} must be zero or more seconds")
    return value


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{text!r} is not one of debug, info, warning, error")
    return level


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k=v` (e.g. pod=$(POD_NAME),namespace=$(POD_NAMESPACE))."""
    labels = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{item!r} is not KEY=VALUE")
        labels.append((key.strip(), value.strip()))
    return tuple(labels)


def parse_impressions_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in IMPRESSIONS_MODES:
        raise ConfigError(f"{text!r} is not one of {', '.join(IMPRESSIONS_MODES)}")
    return mode


def parse_interval(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ConfigError(f"{text!r} must be more than zero seconds")
    return value


def parse_trusted_keys(text: str) -> tuple[tuple[str | None, Path], ...]:
    """`ID=PATH,...` public key files, or directories of `ID.pub` files (None as the id)."""
    entries: list[tuple[str | None, Path]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, path = item.partition("=")
        if sep and (not key_id.strip() or not path.strip()):
            raise ConfigError(f"{item!r} is not ID=PATH (or a directory of ID.pub files)")
        entries.append((key_id.strip(), Path(path.strip())) if sep else (None, Path(item)))
    return tuple(entries)


def parse_optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def parse_optional_str(text: str) -> str | None:
    return text or None


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    is_switch: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "snapshot",
        parse_optional_path,
        "snapshot file loaded at start (.json, .msgpack, .mpk)",
        "FILE",
    ),
    Setting("demo", parse_bool, "serve the embedded demo snapshot", is_switch=True),
    Setting(
        "grpc_listen",
        parse_address,
        "gRPC TCP listen address, or 'off' (default 127.0.0.1:8013)",
        "HOST:PORT",
    ),
    Setting("uds", parse_optional_path, "also serve gRPC on this Unix socket (mode 0660)", "PATH"),
    Setting(
        "uds_group", parse_optional_str, "group (name or id) that owns the Unix socket", "GROUP"
    ),
    Setting(
        "fastlane_uds",
        parse_optional_path,
        "serve the fast lane (msgpack frames, docs/fastlane.md) on this Unix socket (mode 0660)",
        "PATH",
    ),
    Setting(
        "mgmt_listen",
        parse_address,
        "management HTTP address for /metrics /healthz /readyz "
        "/status, or 'off' (default 0.0.0.0:8014)",
        "HOST:PORT",
    ),
    Setting(
        "shutdown_grace",
        parse_grace,
        "seconds in-flight calls get to finish on SIGTERM (default 5)",
        "SECONDS",
    ),
    Setting("log_level", parse_log_level, "debug, info, warning or error (default info)", "LEVEL"),
    Setting(
        "max_concurrent_rpcs",
        parse_positive_int,
        "calls served at once, streams included; "
        "more are refused with RESOURCE_EXHAUSTED (default 4096)",
        "N",
    ),
    Setting(
        "max_message_bytes",
        parse_positive_int,
        "largest request or response message (default 4194304)",
        "BYTES",
    ),
    Setting(
        "max_attributes",
        parse_positive_int,
        "most attributes (or event properties) in one request item (default 256)",
        "N",
    ),
    Setting(
        "max_batch_items",
        parse_positive_int,
        "most lookups in one GetTreatments or EvaluateBatch call (default 10000)",
        "N",
    ),
    Setting(
        "control_plane",
        parse_optional_str,
        "control plane to dial for snapshots (fader.v1.ControlPlaneService Sync)",
        "HOST:PORT",
    ),
    Setting(
        "control_plane_ca",
        parse_optional_path,
        "CA bundle: dial the control plane over TLS, verified against it",
        "FILE",
    ),
    Setting(
        "control_plane_token_file",
        parse_optional_path,
        "bearer token sent to the control plane (re-read on every reconnect)",
        "FILE",
    ),
    Setting(
        "sidecar_id",
        parse_optional_str,
        "how the control plane names this sidecar (default: $POD_NAME, else the hostname)",
        "ID",
    ),
    Setting(
        "sidecar_labels",
        parse_labels,
        "labels reported to the control plane, e.g. app=shop,namespace=prod",
        "K=V,...",
    ),
    Setting(
        "cache_dir",
        parse_optional_path,
        "keep the last applied snapshot here and serve it at start if the source is down",
        "DIR",
    ),
    Setting(
        "admin_listen",
        parse_address,
        "admin gRPC address for PushSnapshot, or 'off' (default off); "
        "needs --admin-token-file unless on loopback",
        "HOST:PORT",
    ),
    Setting(
        "admin_token_file",
        parse_optional_path,
        "bearer tokens accepted by the admin listener, one per line (re-read when changed)",
        "FILE",
    ),
    Setting(
        "max_staleness",
        parse_grace,
        "seconds without contact with the snapshot's source after which /readyz fails "
        "(default 0: never)",
        "SECONDS",
    ),
    Setting(
        "collector",
        parse_optional_str,
        "where impressions and track events are uploaded (fader.v1 TelemetryService); "
        "default: the --control-plane address; without either, nothing is recorded",
        "HOST:PORT",
    ),
    Setting(
        "collector_ca",
        parse_optional_path,
        "CA bundle: upload to --collector over TLS, verified against it",
        "FILE",
    ),
    Setting(
        "collector_token_file",
        parse_optional_path,
        "bearer token sent to --collector (re-read for every upload)",
        "FILE",
    ),
    Setting(
        "impressions_mode",
        parse_impressions_mode,
        "optimized (first per hour, plus counts), debug (every impression) or none "
        "(counts and unique keys only) (default optimized)",
        "MODE",
    ),
    Setting(
        "impressions_observer_size",
        parse_positive_int,
        "impression hashes remembered to deduplicate (~150 bytes each; default 100000)",
        "N",
    ),
    Setting(
        "telemetry_batch_records",
        parse_positive_int,
        "most records in one upload (default 5000)",
        "N",
    ),
    Setting(
        "telemetry_batch_bytes",
        parse_positive_int,
        "most estimated bytes in one upload (default 1048576)",
        "BYTES",
    ),
    Setting(
        "telemetry_flush_interval",
        parse_interval,
        "seconds between uploads of a batch that is not full yet (default 10)",
        "SECONDS",
    ),
    Setting(
        "telemetry_memory_bytes",
        parse_positive_int,
        "batches held in memory before they go to the spool (default 33554432)",
        "BYTES",
    ),
    Setting(
        "telemetry_flush_timeout",
        parse_grace,
        "seconds to upload what is left on shutdown before it is spooled (default 5)",
        "SECONDS",
    ),
    Setting(
        "spool_dir",
        parse_optional_path,
        "keep batches here while the collector is unreachable, and replay them in order "
        "(default: <cache-dir>/spool when --cache-dir is set)",
        "DIR",
    ),
    Setting(
        "spool_max_bytes",
        parse_positive_int,
        "size limit of the spool; past it batches are dropped and counted (default 268435456)",
        "BYTES",
    ),
    # Hardening: signed snapshots, size limits, TLS and tokens (README "Security").
    Setting(
        "trusted_keys",
        parse_trusted_keys,
        "Ed25519 public keys (ID=PATH,... or a directory of ID.pub files): once given, every "
        "snapshot from every source, the cache included, must be signed by one of them",
        "ID=PATH|DIR",
    ),
    Setting(
        "max_snapshot_bytes",
        parse_positive_int,
        "largest snapshot accepted from any source (default 268435456)",
        "BYTES",
    ),
    Setting("max_flags", parse_positive_int, "most flags in a snapshot (default 50000)", "N"),
    Setting(
        "max_segment_keys",
        parse_positive_int,
        "most segment keys in a snapshot, all segments together (default 5000000)",
        "N",
    ),
    Setting(
        "max_attribute_size",
        parse_positive_int,
        "longest attribute value in a gRPC request, in characters (a string, or a list's "
        "strings together; default 65536)",
        "CHARS",
    ),
    Setting(
        "max_watch_streams",
        parse_positive_int,
        "WatchChanges streams open at once; more are refused with RESOURCE_EXHAUSTED "
        "(default 1024)",
        "N",
    ),
    Setting(
        "admin_tls_cert",
        parse_optional_path,
        "serve the admin API over TLS with this chain",
        "FILE",
    ),
    Setting("admin_tls_key", parse_optional_path, "private key of --admin-tls-cert", "FILE"),
    Setting(
        "admin_client_ca",
        parse_optional_path,
        "require admin clients to present a certificate signed by this CA (mTLS)",
        "FILE",
    ),
    Setting(
        "grpc_tls_cert",
        parse_optional_path,
        "serve gRPC on --grpc-listen over TLS with this chain (the Unix socket stays plaintext)",
        "FILE",
    ),
    Setting("grpc_tls_key", parse_optional_path, "private key of --grpc-tls-cert", "FILE"),
    Setting(
        "grpc_client_ca",
        parse_optional_path,
        "require evaluation clients on TCP to present a certificate signed by this CA (mTLS)",
        "FILE",
    ),
    Setting(
        "grpc_token_file",
        parse_optional_path,
        "bearer tokens required from evaluation clients on TCP, one per line (re-read when "
        "changed; the Unix socket and grpc.health.v1 are exempt)",
        "FILE",
    ),
    Setting(
        "control_plane_cert",
        parse_optional_path,
        "client certificate presented to the control plane (mTLS; needs --control-plane-ca)",
        "FILE",
    ),
    Setting(
        "control_plane_key", parse_optional_path, "private key of --control-plane-cert", "FILE"
    ),
    Setting(
        "collector_cert",
        parse_optional_path,
        "client certificate presented to --collector (mTLS; needs --collector-ca)",
        "FILE",
    ),
    Setting("collector_key", parse_optional_path, "private key of --collector-cert", "FILE"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fader serve",
        description="Serve feature-flag evaluations over gRPC (TCP and/or a Unix socket).",
        epilog="Every option can also be set as FADER_<NAME> in the environment or as <name> "
        "in the TOML file given by --config (or FADER_CONFIG); flags win over the environment, "
        "which wins over the file.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings")
    for setting in SETTINGS:
        if setting.is_switch:
            parser.add_argument(
                setting.flag,
                action="store_const",
                const="true",
                dest=setting.name,
                help=setting.help,
            )
        else:
            parser.add_argument(
                setting.flag, metavar=setting.metavar, dest=setting.name, help=setting.help
            )
    return parser


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Merges the sources (flag > environment > file > default) and validates the result.

    Raises SystemExit for `--help` and for unknown flags (argparse), ConfigError otherwise.
    """
    environ = os.environ if environ is None else environ
    flags: dict[str, str] = vars(build_parser().parse_args(list(argv)))
    config_path = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    raw: dict[str, str] = read_config_file(Path(config_path)) if config_path else {}
    raw.update({s.name: environ[s.env] for s in SETTINGS if s.env in environ})
    raw.update(flags)
    values: dict[str, Any] = {}
    for name, text in raw.items():
        setting = _BY_NAME[name]
        try:
            values[name] = setting.parse(text)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"{setting.flag} / {setting.env}: {err}") from None
    settings = dataclasses.replace(Settings(), **values)
    check_consistency(settings)
    return settings


def read_config_file(path: Path) -> dict[str, str]:
    """Reads a flat TOML table; unknown keys are errors so that typos do not pass silently."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path}: {err}") from None
    unknown = sorted(set(document) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s): {', '.join(unknown)}")
    return {key: _as_text(value) for key, value in document.items()}


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_consistency(settings: Settings) -> None:
    if settings.grpc_listen is None and settings.uds is None:
        raise ConfigError("nothing to serve on: --grpc-listen is 'off' and no --uds is given")
    if settings.snapshot is not None and settings.demo:
        raise ConfigError("--snapshot and --demo exclude each other")
    if settings.uds_group is not None and settings.uds is None and settings.fastlane_uds is None:
        raise ConfigError("--uds-group needs --uds or --fastlane-uds")
    if settings.control_plane is not None and (settings.snapshot is not None or settings.demo):
        raise ConfigError("--control-plane excludes --snapshot and --demo: one source of truth")
    for option, value in (
        ("--control-plane-ca", settings.control_plane_ca),
        ("--control-plane-token-file", settings.control_plane_token_file),
    ):
        if value is not None and settings.control_plane is None:
            raise ConfigError(f"{option} needs --control-plane")
    if settings.telemetry_memory_bytes < settings.telemetry_batch_bytes:
        raise ConfigError(
            "--telemetry-memory-bytes must hold at least one batch (--telemetry-batch-bytes)"
        )
    for option, value in (
        ("--collector-ca", settings.collector_ca),
        ("--collector-cert", settings.collector_cert),
        ("--collector-token-file", settings.collector_token_file),
    ):
        if value is not None and settings.collector is None:
            raise ConfigError(f"{option} needs --collector")
    admin = settings.admin_listen
    authenticated = settings.admin_token_file is not None or settings.admin_client_ca is not None
    if admin is not None and not authenticated and not is_loopback(admin.host):
        raise ConfigError(
            f"--admin-listen {admin} is not a loopback address: whoever can push a snapshot "
            "controls production, so --admin-token-file is required (or mTLS: "
            "--admin-tls-cert with --admin-client-ca)"
        )
    for option, value in (
        ("--admin-token-file", settings.admin_token_file),
        ("--admin-tls-cert", settings.admin_tls_cert),
    ):
        if value is not None and admin is None:
            raise ConfigError(f"{option} needs --admin-listen")
    check_hardening(settings)


def check_hardening(settings: Settings) -> None:
    """The signing and TLS settings: what goes together and what excludes what."""
    if settings.demo and settings.trusted_keys:
        raise ConfigError(
            "--demo and --trusted-keys exclude each other: the embedded demo is not signed"
        )
    for prefix, cert, key, client_ca in (
        ("--admin", settings.admin_tls_cert, settings.admin_tls_key, settings.admin_client_ca),
        ("--grpc", settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_client_ca),
    ):
        if (cert is None) != (key is None):
            raise ConfigError(f"{prefix}-tls-cert and {prefix}-tls-key go together")
        if client_ca is not None and cert is None:
            raise ConfigError(f"{prefix}-client-ca (mTLS) needs {prefix}-tls-cert")
    if (settings.control_plane_cert is None) != (settings.control_plane_key is None):
        raise ConfigError("--control-plane-cert and --control-plane-key go together")
    if settings.control_plane_cert is not None and settings.control_plane_ca is None:
        raise ConfigError("--control-plane-cert (mTLS) needs --control-plane-ca")
    if (settings.collector_cert is None) != (settings.collector_key is None):
        raise ConfigError("--collector-cert and --collector-key go together")
    if settings.collector_cert is not None and settings.collector_ca is None:
        raise ConfigError("--collector-cert (mTLS) needs --collector-ca")
    tcp_auth = settings.grpc_tls_cert is not None or settings.grpc_token_file is not None
    if tcp_auth and settings.grpc_listen is None:
        raise ConfigError("--grpc-tls-cert and --grpc-token-file need --grpc-listen")


def control_plane_security(settings: Settings) -> ChannelSecurity:
    """The control-plane channel's TLS, client certificate and token; OSError when a file
    cannot be read."""
    return ChannelSecurity.from_files(
        ca=settings.control_plane_ca,
        cert=settings.control_plane_cert,
        key=settings.control_plane_key,
        token_file=settings.control_plane_token_file,
    )


def collector_target(settings: Settings) -> tuple[str, ChannelSecurity] | None:
    """--collector with its own TLS, certificate and token, else the control plane with its
    own: the reference control plane hosts the collector, so one address is enough by
    default. None when there is neither; OSError when a file cannot be read."""
    if settings.collector is not None:
        return settings.collector, ChannelSecurity.from_files(
            ca=settings.collector_ca,
            cert=settings.collector_cert,
            key=settings.collector_key,
            token_file=settings.collector_token_file,
        )
    if settings.control_plane is not None:
        return settings.control_plane, control_plane_security(settings)
    return None


def sidecar_id(settings: Settings) -> str:
    """How this sidecar names itself upstream: --sidecar-id, else $POD_NAME, else the host."""
    return settings.sidecar_id or os.environ.get("POD_NAME") or socket.gethostname()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
