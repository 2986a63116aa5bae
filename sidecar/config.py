"""Settings for `fader serve`: command-line flags, `FADER_*` environment variables, a config file.

Every setting is declared once, as a field of `Settings`: its type and default, and in the
field's `setting(...)` its group, parser, help text and metavar. The flag (`--grpc-listen`),
the environment variable (`FADER_GRPC_LISTEN`) and the config-file key (`grpc_listen`) are
derived from the field's name, `fader serve --help` and the README's settings table
(`python -m sidecar.config --markdown`) are rendered from the declaration, and each group
checks its own combinations. Precedence, highest first: flag, environment, config file
(TOML), built-in default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import socket
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fader.snapshot.limits import SnapshotLimits

from sidecar.limits import RequestLimits
from sidecar.plumbing.channels import ChannelSecurity

ENV_PREFIX = "FADER_"
OFF = "off"
IMPRESSIONS_MODES = ("optimized", "debug", "none")
# The limits' defaults are the library's own (one value, wherever the limit is used).
_REQUEST: Final = RequestLimits()
_SNAPSHOT: Final = SnapshotLimits()


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one."""


@dataclass(frozen=True)
class Address:
    """A TCP listen address; `port` 0 asks the kernel for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- parsers: text (a flag, a variable, a file value) to a typed value ------------------------


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


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{text!r} is not a finite number")
    return value


def parse_positive_int(text: str) -> int:
    value = _whole(text)
    if value <= 0:
        raise ConfigError(f"{text!r} must be a positive integer")
    return value


def parse_grace(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise ConfigError(f"{text!r} must be zero or more seconds")
    return value


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{text!r} is not one of debug, info, warning, error")
    return level


def parse_log_format(text: str) -> str:
    fmt = text.strip().lower()
    if fmt not in ("text", "json"):
        raise ConfigError(f"{text!r} is not one of text, json")
    return fmt


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
    value = _number(text)
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


# --- the declaration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """The part of the sidecar that owns some settings; a section of --help and the README."""

    title: str
    about: str


LISTENERS = Group("Listeners", "where the sidecar serves lookups and management HTTP")
SECURITY = Group("Security", "TLS and tokens on the evaluation port, signed snapshots")
SOURCES = Group("Snapshot sources", "where snapshots come from, and how fresh they must be")
PUSH = Group("Direct push", "the admin listener for PushSnapshot (fader push)")
TELEMETRY = Group("Telemetry", "impressions and track events: where and how they are uploaded")
LIMITS = Group("Limits", "what one request, one stream or one snapshot may hold")
SPLIT_API = Group(
    "Split SDK API",
    "Split's own SDKs sync flags from the sidecar and post impressions and events to it "
    '(README "Move from Split")',
)
PROCESS = Group("Process", "logging and shutdown")
GROUPS: Final = (LISTENERS, SECURITY, SOURCES, PUSH, TELEMETRY, SPLIT_API, LIMITS, PROCESS)


SPEC: Final = "setting"


@dataclass(frozen=True)
class Spec:
    """Everything about one setting but its name, type and default (the field's own)."""

    group: Group
    parse: Callable[[str], Any]
    help: str
    metavar: str | None
    switch: bool
    shown_default: str | None  # for a default computed at run time or that needs words


def setting(
    group: Group,
    parse: Callable[[str], Any],
    help: str,
    metavar: str | None = None,
    *,
    switch: bool = False,
    shown_default: str | None = None,
) -> dict[str, Spec]:
    """The metadata of a `Settings` field: how it is read, grouped and explained."""
    return {SPEC: Spec(group, parse, help, metavar, switch, shown_default)}


@dataclass(frozen=True)
class Settings:
    """Every setting of `fader serve`, by group; construct with keywords (tests do)."""

    # Listeners
    grpc_listen: Address | None = field(
        default=Address("127.0.0.1", 8013),
        metadata=setting(
            LISTENERS, parse_address, "gRPC TCP listen address, or 'off'", "HOST:PORT"
        ),
    )
    uds: Path | None = field(
        default=None,
        metadata=setting(
            LISTENERS,
            parse_optional_path,
            "also serve gRPC on this Unix socket (mode 0660)",
            "PATH",
        ),
    )
    uds_group: str | None = field(
        default=None,
        metadata=setting(
            LISTENERS, parse_optional_str, "group (name or id) that owns the Unix sockets", "GROUP"
        ),
    )
    fastlane_uds: Path | None = field(
        default=None,
        metadata=setting(
            LISTENERS,
            parse_optional_path,
            "serve the fast lane (msgpack frames, docs/fastlane.md) on this Unix socket (mode "
            "0660)",
            "PATH",
        ),
    )
    sync_listen: Address | None = field(
        default=Address("127.0.0.1", 8015),
        metadata=setting(
            LISTENERS,
            parse_address,
            "flagd sync (flagd.sync.v1, for in-process OpenFeature providers) TCP address, or "
            "'off'; also served on --grpc-listen and --uds",
            "HOST:PORT",
        ),
    )
    ofrep_listen: Address | None = field(
        default=Address("127.0.0.1", 8016),
        metadata=setting(
            LISTENERS,
            parse_address,
            "OFREP (OpenFeature Remote Evaluation Protocol, HTTP) address, or 'off'",
            "HOST:PORT",
        ),
    )
    mgmt_listen: Address | None = field(
        default=Address("0.0.0.0", 8014),
        metadata=setting(
            LISTENERS,
            parse_address,
            "management HTTP address for /metrics /healthz /readyz /status, or 'off'",
            "HOST:PORT",
        ),
    )

    # Security
    grpc_tls_cert: Path | None = field(
        default=None,
        metadata=setting(
            SECURITY,
            parse_optional_path,
            "serve gRPC on --grpc-listen over TLS with this chain (the Unix socket stays "
            "plaintext)",
            "FILE",
        ),
    )
    grpc_tls_key: Path | None = field(
        default=None,
        metadata=setting(SECURITY, parse_optional_path, "private key of --grpc-tls-cert", "FILE"),
    )
    grpc_client_ca: Path | None = field(
        default=None,
        metadata=setting(
            SECURITY,
            parse_optional_path,
            "require evaluation clients on TCP to present a certificate signed by this CA (mTLS)",
            "FILE",
        ),
    )
    grpc_token_file: Path | None = field(
        default=None,
        metadata=setting(
            SECURITY,
            parse_optional_path,
            "bearer tokens required from evaluation clients on TCP, one per line, re-read "
            "when changed (the Unix socket and grpc.health.v1 are exempt)",
            "FILE",
        ),
    )
    ofrep_token_file: Path | None = field(
        default=None,
        metadata=setting(
            SECURITY,
            parse_optional_path,
            "bearer tokens required from OFREP clients, one per line, re-read when changed",
            "FILE",
        ),
    )
    trusted_keys: tuple[tuple[str | None, Path], ...] = field(
        default=(),
        metadata=setting(
            SECURITY,
            parse_trusted_keys,
            "Ed25519 public keys (ID=PATH,... or a directory of ID.pub files): once given, "
            "every snapshot from every source, the cache included, must be signed by one of "
            "them",
            "ID=PATH|DIR",
            shown_default="none (signing off)",
        ),
    )

    # Snapshot sources
    snapshot: Path | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_path,
            "snapshot file loaded at start and watched (.json, .msgpack, .mpk)",
            "FILE",
        ),
    )
    demo: bool = field(
        default=False,
        metadata=setting(SOURCES, parse_bool, "serve the embedded demo snapshot", switch=True),
    )
    control_plane: str | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_str,
            "control plane to dial for snapshots (fader.v1.ControlPlaneService Sync); "
            "excludes --snapshot and --demo",
            "HOST:PORT",
        ),
    )
    control_plane_ca: Path | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_path,
            "CA bundle: dial the control plane over TLS, verified against it",
            "FILE",
        ),
    )
    control_plane_cert: Path | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_path,
            "client certificate presented to the control plane (mTLS; needs "
            "--control-plane-ca); also to the collector when there is no --collector",
            "FILE",
        ),
    )
    control_plane_key: Path | None = field(
        default=None,
        metadata=setting(
            SOURCES, parse_optional_path, "private key of --control-plane-cert", "FILE"
        ),
    )
    control_plane_token_file: Path | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_path,
            "bearer token sent to the control plane (re-read on every reconnect)",
            "FILE",
        ),
    )
    sidecar_id: str | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_str,
            "how the control plane names this sidecar",
            "ID",
            shown_default="$POD_NAME, else the hostname",
        ),
    )
    sidecar_labels: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=setting(
            SOURCES,
            parse_labels,
            "labels reported to the control plane, e.g. app=shop,namespace=prod",
            "K=V,...",
        ),
    )
    cache_dir: Path | None = field(
        default=None,
        metadata=setting(
            SOURCES,
            parse_optional_path,
            "last-known-good cache: every applied snapshot is written here, and served at "
            "start until a source answers",
            "DIR",
        ),
    )
    max_staleness: float = field(
        default=0.0,
        metadata=setting(
            SOURCES,
            parse_grace,
            "seconds without contact with the snapshot's source after which the sidecar is "
            "not ready (gRPC health, /readyz)",
            "SECONDS",
            shown_default="0 (never)",
        ),
    )

    # Direct push
    admin_listen: Address | None = field(
        default=None,
        metadata=setting(
            PUSH,
            parse_address,
            "admin gRPC address for PushSnapshot, or 'off'; off loopback it needs "
            "--admin-token-file or mTLS",
            "HOST:PORT",
            shown_default="off",
        ),
    )
    admin_token_file: Path | None = field(
        default=None,
        metadata=setting(
            PUSH,
            parse_optional_path,
            "bearer tokens accepted by the admin listener, one per line (re-read when changed)",
            "FILE",
        ),
    )
    admin_tls_cert: Path | None = field(
        default=None,
        metadata=setting(
            PUSH, parse_optional_path, "serve the admin API over TLS with this chain", "FILE"
        ),
    )
    admin_tls_key: Path | None = field(
        default=None,
        metadata=setting(PUSH, parse_optional_path, "private key of --admin-tls-cert", "FILE"),
    )
    admin_client_ca: Path | None = field(
        default=None,
        metadata=setting(
            PUSH,
            parse_optional_path,
            "require admin clients to present a certificate signed by this CA (mTLS)",
            "FILE",
        ),
    )

    # Telemetry
    collector: str | None = field(
        default=None,
        metadata=setting(
            TELEMETRY,
            parse_optional_str,
            "where impressions and track events are uploaded (fader.v1 TelemetryService); "
            "without it and --control-plane, nothing is recorded",
            "HOST:PORT",
            shown_default="the --control-plane address, with its TLS settings",
        ),
    )
    collector_ca: Path | None = field(
        default=None,
        metadata=setting(
            TELEMETRY,
            parse_optional_path,
            "CA bundle: upload to --collector over TLS, verified against it",
            "FILE",
        ),
    )
    collector_cert: Path | None = field(
        default=None,
        metadata=setting(
            TELEMETRY,
            parse_optional_path,
            "client certificate presented to --collector (mTLS; needs --collector-ca)",
            "FILE",
        ),
    )
    collector_key: Path | None = field(
        default=None,
        metadata=setting(TELEMETRY, parse_optional_path, "private key of --collector-cert", "FILE"),
    )
    collector_token_file: Path | None = field(
        default=None,
        metadata=setting(
            TELEMETRY,
            parse_optional_path,
            "bearer token sent to --collector (re-read for every upload)",
            "FILE",
        ),
    )
    impressions_mode: str = field(
        default="optimized",
        metadata=setting(
            TELEMETRY,
            parse_impressions_mode,
            "optimized (first per hour, plus counts), debug (every impression) or none "
            "(counts and unique keys only)",
            "MODE",
        ),
    )
    impressions_observer_size: int = field(
        default=100_000,
        metadata=setting(
            TELEMETRY,
            parse_positive_int,
            "impression hashes remembered to deduplicate (~90 bytes each at most)",
            "N",
        ),
    )
    # 10,000: an upload costs its sender ~0.8-0.9 ms of CPU whatever its size (gRPC's thread
    # hand-offs; benchmarks/RESULTS.md), so in debug mode fewer, fuller batches are cheaper;
    # a debug batch of 10,000 is ~680 KB, under --telemetry-batch-bytes' 1 MiB
    telemetry_batch_records: int = field(
        default=10_000,
        metadata=setting(TELEMETRY, parse_positive_int, "most records in one upload", "N"),
    )
    telemetry_batch_bytes: int = field(
        default=1024 * 1024,
        metadata=setting(
            TELEMETRY, parse_positive_int, "most estimated bytes in one upload", "BYTES"
        ),
    )
    telemetry_flush_interval: float = field(
        default=10.0,
        metadata=setting(
            TELEMETRY,
            parse_interval,
            "seconds between uploads of a batch that is not full yet",
            "SECONDS",
        ),
    )
    telemetry_memory_bytes: int = field(
        default=32 * 1024 * 1024,
        metadata=setting(
            TELEMETRY,
            parse_positive_int,
            "batches held in memory before they go to the spool",
            "BYTES",
        ),
    )
    telemetry_flush_timeout: float = field(
        default=5.0,
        metadata=setting(
            TELEMETRY,
            parse_grace,
            "seconds to upload what is left on shutdown, after the drain; the rest is spooled",
            "SECONDS",
        ),
    )
    spool_dir: Path | None = field(
        default=None,
        metadata=setting(
            TELEMETRY,
            parse_optional_path,
            "keep batches here while the collector is unreachable, and replay them in order",
            "DIR",
            shown_default="<cache-dir>/spool when --cache-dir is set",
        ),
    )
    spool_max_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata=setting(
            TELEMETRY,
            parse_positive_int,
            "size limit of the spool; past it batches are dropped and counted",
            "BYTES",
        ),
    )

    # Split SDK API
    split_api_listen: Address | None = field(
        default=None,
        metadata=setting(
            SPLIT_API,
            parse_address,
            "serve Split's SDK API (splitChanges, segmentChanges, impressions, events) on this "
            "HTTP address, e.g. 127.0.0.1:8019, or 'off'; point the SDKs' URLs at it",
            "HOST:PORT",
            shown_default="off",
        ),
    )
    split_api_key_file: Path | None = field(
        default=None,
        metadata=setting(
            SPLIT_API,
            parse_optional_path,
            "SDK keys accepted by the Split SDK API (Authorization: Bearer), one per line, "
            "re-read when changed; without it any key is accepted",
            "FILE",
        ),
    )

    # Limits
    max_concurrent_rpcs: int = field(
        default=4096,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "calls served at once, streams included; more are refused with RESOURCE_EXHAUSTED",
            "N",
        ),
    )
    max_message_bytes: int = field(
        default=_REQUEST.max_message_bytes,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "largest request or response message (gRPC and fast-lane frames)",
            "BYTES",
        ),
    )
    max_attributes: int = field(
        default=_REQUEST.max_attributes,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "most attributes (or event properties) in one request item",
            "N",
        ),
    )
    max_attribute_size: int = field(
        default=_REQUEST.max_attribute_size,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "longest attribute value in a request, in characters (a string, or a list's "
            "strings together)",
            "CHARS",
        ),
    )
    max_batch_items: int = field(
        default=_REQUEST.max_batch_items,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "most lookups in one GetTreatments or EvaluateBatch call (or fast-lane batch)",
            "N",
        ),
    )
    max_watch_streams: int = field(
        default=_REQUEST.max_watch_streams,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "WatchChanges streams open at once; more are refused with RESOURCE_EXHAUSTED",
            "N",
        ),
    )
    max_snapshot_bytes: int = field(
        default=_SNAPSHOT.max_snapshot_bytes,
        metadata=setting(
            LIMITS, parse_positive_int, "largest snapshot accepted from any source", "BYTES"
        ),
    )
    max_flags: int = field(
        default=_SNAPSHOT.max_flags,
        metadata=setting(LIMITS, parse_positive_int, "most flags in a snapshot", "N"),
    )
    max_segment_keys: int = field(
        default=_SNAPSHOT.max_segment_keys,
        metadata=setting(
            LIMITS,
            parse_positive_int,
            "most segment keys in a snapshot, all segments together",
            "N",
        ),
    )

    # Process
    shutdown_grace: float = field(
        default=5.0,
        metadata=setting(
            PROCESS, parse_grace, "seconds in-flight calls get to finish on SIGTERM", "SECONDS"
        ),
    )
    log_level: str = field(
        default="info",
        metadata=setting(PROCESS, parse_log_level, "debug, info, warning or error", "LEVEL"),
    )
    log_format: str = field(
        default="text",
        metadata=setting(
            PROCESS,
            parse_log_format,
            "text, or json: one JSON object a line (time, level, logger, message)",
            "FORMAT",
        ),
    )

    def request_limits(self) -> RequestLimits:
        """What one request may carry, in the one shape every lane takes."""
        return RequestLimits(
            max_attributes=self.max_attributes,
            max_attribute_size=self.max_attribute_size,
            max_batch_items=self.max_batch_items,
            max_watch_streams=self.max_watch_streams,
            max_message_bytes=self.max_message_bytes,
        )

    def snapshot_limits(self) -> SnapshotLimits:
        """What one snapshot may hold, from any source."""
        return SnapshotLimits(self.max_snapshot_bytes, self.max_flags, self.max_segment_keys)


@dataclass(frozen=True)
class Declared:
    """One declared setting: its field's name and default, and its `Spec`."""

    name: str
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def shown_default(self) -> str:
        """The default as --help and the README show it."""
        if self.spec.shown_default is not None:
            return self.spec.shown_default
        value = self.default
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


def declared() -> Iterator[Declared]:
    """Every setting, in declaration order (grouped)."""
    for item in dataclasses.fields(Settings):
        yield Declared(item.name, item.default, item.metadata[SPEC])


SETTINGS: Final = tuple(declared())
_BY_NAME: Final = {s.name: s for s in SETTINGS}


# --- each group's combinations ----------------------------------------------------------------


def _check_listeners(settings: Settings) -> None:
    if settings.grpc_listen is None and settings.uds is None:
        raise ConfigError("nothing to serve on: --grpc-listen is 'off' and no --uds is given")
    if settings.uds_group is not None and settings.uds is None and settings.fastlane_uds is None:
        raise ConfigError("--uds-group needs --uds or --fastlane-uds")


def _check_security(settings: Settings) -> None:
    _check_server_tls(
        "--grpc", settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_client_ca
    )
    tcp_auth = settings.grpc_tls_cert is not None or settings.grpc_token_file is not None
    if tcp_auth and settings.grpc_listen is None:
        raise ConfigError("--grpc-tls-cert and --grpc-token-file need --grpc-listen")


def _check_sources(settings: Settings) -> None:
    if settings.snapshot is not None and settings.demo:
        raise ConfigError("--snapshot and --demo exclude each other")
    if settings.control_plane is not None and (settings.snapshot is not None or settings.demo):
        raise ConfigError("--control-plane excludes --snapshot and --demo: one source of truth")
    if settings.demo and settings.trusted_keys:
        raise ConfigError(
            "--demo and --trusted-keys exclude each other: the embedded demo is not signed"
        )
    _check_client_tls(
        "--control-plane",
        settings.control_plane,
        settings.control_plane_ca,
        settings.control_plane_cert,
        settings.control_plane_key,
        settings.control_plane_token_file,
    )


def _check_push(settings: Settings) -> None:
    admin = settings.admin_listen
    for option, value in (
        ("--admin-token-file", settings.admin_token_file),
        ("--admin-tls-cert", settings.admin_tls_cert),
    ):
        if value is not None and admin is None:
            raise ConfigError(f"{option} needs --admin-listen")
    _check_server_tls(
        "--admin", settings.admin_tls_cert, settings.admin_tls_key, settings.admin_client_ca
    )
    authenticated = settings.admin_token_file is not None or settings.admin_client_ca is not None
    if admin is not None and not authenticated and not is_loopback(admin.host):
        raise ConfigError(
            f"--admin-listen {admin} is not a loopback address: whoever can push a snapshot "
            "controls production, so --admin-token-file is required (or mTLS: "
            "--admin-tls-cert with --admin-client-ca)"
        )


def _check_telemetry(settings: Settings) -> None:
    if settings.telemetry_memory_bytes < settings.telemetry_batch_bytes:
        raise ConfigError(
            "--telemetry-memory-bytes must hold at least one batch (--telemetry-batch-bytes)"
        )
    _check_client_tls(
        "--collector",
        settings.collector,
        settings.collector_ca,
        settings.collector_cert,
        settings.collector_key,
        settings.collector_token_file,
    )


def _check_server_tls(
    prefix: str, cert: Path | None, key: Path | None, client_ca: Path | None
) -> None:
    """A listener's TLS: the chain and its key together; mTLS only on top of TLS."""
    if (cert is None) != (key is None):
        raise ConfigError(f"{prefix}-tls-cert and {prefix}-tls-key go together")
    if client_ca is not None and cert is None:
        raise ConfigError(f"{prefix}-client-ca (mTLS) needs {prefix}-tls-cert")


def _check_client_tls(
    prefix: str,
    target: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    token_file: Path | None,
) -> None:
    """A peer the sidecar dials: its options need its address; a client certificate needs
    its key and TLS."""
    for suffix, value in (("-ca", ca), ("-cert", cert), ("-token-file", token_file)):
        if value is not None and target is None:
            raise ConfigError(f"{prefix}{suffix} needs {prefix}")
    if (cert is None) != (key is None):
        raise ConfigError(f"{prefix}-cert and {prefix}-key go together")
    if cert is not None and ca is None:
        raise ConfigError(f"{prefix}-cert (mTLS) needs {prefix}-ca")


def _check_split_api(settings: Settings) -> None:
    if settings.split_api_key_file is not None and settings.split_api_listen is None:
        raise ConfigError("--split-api-key-file needs --split-api-listen")


GROUP_CHECKS: Final[dict[Group, Callable[[Settings], None]]] = {
    LISTENERS: _check_listeners,
    SECURITY: _check_security,
    SOURCES: _check_sources,
    PUSH: _check_push,
    TELEMETRY: _check_telemetry,
    SPLIT_API: _check_split_api,
}


def validate(settings: Settings) -> None:
    """Every group's checks, in --help order; ConfigError names the options involved."""
    for group in GROUPS:
        check = GROUP_CHECKS.get(group)
        if check is not None:
            check(settings)


# --- reading the sources --------------------------------------------------------------------


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
    sections = {group: parser.add_argument_group(group.title, group.about) for group in GROUPS}
    for item in SETTINGS:
        section = sections[item.spec.group]
        text = f"{item.spec.help} (default: {item.shown_default})".replace("%", "%%")
        if item.spec.switch:
            section.add_argument(
                item.flag, action="store_const", const="true", dest=item.name, help=text
            )
        else:
            section.add_argument(item.flag, metavar=item.spec.metavar, dest=item.name, help=text)
    return parser


def load_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Merges the sources (flag > environment > file > default) and validates the result.

    Raises SystemExit for `--help` and for unknown flags (argparse), ConfigError otherwise.
    """
    environ = os.environ if environ is None else environ
    flags: dict[str, str] = vars(build_parser().parse_args(list(argv)))
    config_path = flags.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    raw: dict[str, str] = read_config_file(Path(config_path)) if config_path else {}
    # where each value came from, so an error names what the user wrote
    origin = {name: f"config file {config_path}: {name}" for name in raw}
    for item in SETTINGS:
        if item.env in environ:
            raw[item.name], origin[item.name] = environ[item.env], item.env
    for name, text in flags.items():
        if text is not None:
            raw[name], origin[name] = text, _BY_NAME[name].flag
    values: dict[str, Any] = {}
    for name, text in raw.items():
        item = _BY_NAME[name]
        try:
            values[name] = item.spec.parse(text)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"{origin.get(name, item.flag)}: {err}") from None
    settings = Settings(**values)
    validate(settings)
    return settings


def read_config_file(path: Path) -> dict[str, str]:
    """Reads a flat TOML table; unknown keys are errors so that typos do not pass silently."""
    try:
        document = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: not TOML: {err}") from None
    unknown = sorted(set(document) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s): {', '.join(unknown)}")
    return {key: _as_text(value) for key, value in document.items()}


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- what the settings mean for the parts -----------------------------------------------------


def sidecar_id(settings: Settings) -> str:
    """How this sidecar names itself upstream: --sidecar-id, else $POD_NAME, else the host."""
    return settings.sidecar_id or os.environ.get("POD_NAME") or socket.gethostname()


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


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the README's table -----------------------------------------------------------------------

TABLE_BEGIN: Final = (
    "<!-- settings-table: begin (generated by tools/settings_table.py; do not edit) -->\n"
)
TABLE_END: Final = "<!-- settings-table: end -->\n"


def markdown_table() -> str:
    """The README "Settings" tables, one per group, rendered from the declaration."""
    lines: list[str] = []
    for group in GROUPS:
        lines += [f"**{group.title}**: {group.about}.", ""]
        lines += ["| flag | environment | file key | default | meaning |", "|---|---|---|---|---|"]
        for item in SETTINGS:
            if item.spec.group != group:
                continue
            flag = f"{item.flag} {item.spec.metavar}" if item.spec.metavar else item.flag
            cells = (f"`{flag}`", f"`{item.env}`", f"`{item.name}`")
            text = (item.shown_default, item.spec.help)
            row = (*cells, *text)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def with_markdown_table(readme: str) -> str:
    """``readme`` with the text between the table markers rendered anew; ValueError when the
    markers are missing."""
    start = readme.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = readme.index(TABLE_END, start)
    return readme[:start] + "\n" + markdown_table() + "\n" + readme[end:]


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m sidecar.config --markdown")
    sys.stdout.write(markdown_table())
