"""The deployment files say only what `fader serve` and `fader controlplane` really accept.

Every Fader container in deploy/kubernetes/ has its args (with the kubelet's $(VAR)
expansion) and FADER_* environment run through the real parsers; its probes, ports, socket,
snapshot and cache paths are checked against the settings those parsers return and against
the pod's volumes; the control plane's address is checked against its Service. The probe
paths are requested from a real management listener.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fader.snapshot.codec import format_for
from fader.snapshot.loader import load_bytes

from sidecar.config import (
    Address,
    Settings,
    build_parser,
    is_loopback,
    load_settings,
    parse_address,
)
from sidecar.controlplane import main as controlplane_module
from tests.integration.harness import RunningSidecar, http_get

# pytest.importorskip returns the module typed as Any, so mypy needs no PyYAML stubs.
yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
FADER_IMAGE = re.compile(r"^(.*/)?fader:")
UID = 65532
# gRPC's limit for a Unix socket path (sun_path), as `fader serve` enforces it.
MAX_SOCKET_PATH = 105
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def load_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                documents.append((path.name, doc))
    return documents


DOCUMENTS = load_documents()


@dataclass(frozen=True)
class FaderContainer:
    file: str
    workload: str
    pod: dict[str, Any]
    container: dict[str, Any]
    native: bool  # in initContainers (native sidecar) rather than containers

    @property
    def id(self) -> str:
        return f"{self.file}:{self.workload}/{self.container['name']}"

    @property
    def is_controlplane(self) -> bool:
        return list(self.container.get("command", [])) == ["fader", "controlplane"]


def fader_containers() -> Iterator[FaderContainer]:
    for file, doc in DOCUMENTS:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for key in ("initContainers", "containers"):
            for container in pod.get(key, []):
                if FADER_IMAGE.match(container["image"]):
                    yield FaderContainer(
                        file, doc["metadata"]["name"], pod, container, key == "initContainers"
                    )


SIDECARS = [c for c in fader_containers() if not c.is_controlplane]
CONTROLPLANES = [c for c in fader_containers() if c.is_controlplane]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment; fieldRef/secret values get a stand-in."""
    return {e["name"]: e.get("value", f"<{e['name'].lower()}>") for e in container.get("env", [])}


def expanded_args(container: dict[str, Any]) -> list[str]:
    """args as the kubelet passes them: $(VAR) replaced from the container's env.

    The kubelet leaves an undefined $(VAR) as it is, which is never what was meant.
    """
    env = env_of(container)
    args = [str(a) for a in container.get("args", [])]
    for arg in args:
        for name in VAR_REF.findall(arg):
            assert name in env, f"{arg!r} refers to $({name}), not in the container's env"
    return [VAR_REF.sub(lambda m: env[m.group(1)], a) for a in args]


def serve_settings(item: FaderContainer) -> Settings:
    """The real `fader serve` parser on the container's args and environment."""
    assert "command" not in item.container, "the image's entrypoint is `fader serve`"
    assert_full_flag_names(item, set(build_parser()._option_string_actions))
    try:
        return load_settings(expanded_args(item.container), env_of(item.container))
    except SystemExit as exc:  # argparse: an unknown flag or a missing value
        pytest.fail(f"{item.id}: `fader serve` rejects the args (exit {exc.code})")


def assert_full_flag_names(item: FaderContainer, known: set[str]) -> None:
    """argparse also accepts unambiguous prefixes (--max-sidecar); manifests spell flags out,
    so that a flag added later cannot make an abbreviation ambiguous."""
    for arg in expanded_args(item.container):
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            assert name in known, f"{item.id}: {name} is not a full flag name"


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace, flags: set[str]) -> None:
        self.namespace = namespace
        self.flags = flags


def controlplane_args(item: FaderContainer, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The real `fader controlplane` parser on the container's args.

    controlplane_main builds its parser inline, so the parse is intercepted right after it
    succeeds, before anything would start.
    """
    real_parse_args = argparse.ArgumentParser.parse_args

    def intercepting(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        namespace = real_parse_args(self, *args, **kwargs)
        if self.prog == "fader controlplane":
            raise _Parsed(namespace, set(self._option_string_actions))
        return namespace

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", intercepting)
    try:
        controlplane_module.controlplane_main(expanded_args(item.container))
    except _Parsed as parsed:
        assert_full_flag_names(item, parsed.flags)
        return parsed.namespace
    except SystemExit as exc:
        pytest.fail(f"{item.id}: `fader controlplane` rejects the args (exit {exc.code})")
    pytest.fail("controlplane_main returned without parsing its arguments")


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe or Service port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port name {port!r} is not one of the container's ports {named}"
    return int(named[port])


def mount_for(container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volumeMount that holds `path` (the deepest one)."""
    mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of container {container['name']}"
    return max(mounts, key=lambda m: len(m["mountPath"]))


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert name in volumes, f"volume {name} is not declared"
    return dict(volumes[name])


def config_map(name: str) -> dict[str, str]:
    for _, doc in DOCUMENTS:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return dict(doc.get("data", {}))
    raise AssertionError(f"ConfigMap {name} is not in deploy/kubernetes/")


def check_snapshot_text(name: str, text: str) -> None:
    """A ConfigMap's snapshot must pass the sidecar's own validation (else NACK / not ready)."""
    snapshot = load_bytes(text.encode(), format_for(name), f"configmap:{name}")
    assert snapshot.flag_count > 0


def test_manifests_were_found() -> None:
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy"} <= kinds
    assert len(SIDECARS) >= 3 and len(CONTROLPLANES) == 1
    assert any(c.native for c in SIDECARS) and any(not c.native for c in SIDECARS)


@pytest.mark.parametrize("item", SIDECARS, ids=lambda c: c.id)
def test_sidecar_args_probes_and_paths(item: FaderContainer) -> None:
    settings = serve_settings(item)
    container, pod = item.container, item.pod

    # Evaluation API on loopback only; management on the pod IP so that kubelet reaches it.
    assert settings.grpc_listen is None or is_loopback(settings.grpc_listen.host)
    mgmt = settings.mgmt_listen
    assert mgmt is not None and not is_loopback(mgmt.host)
    container_ports = [p["containerPort"] for p in container["ports"]]
    assert mgmt.port in container_ports, f"--mgmt-listen port {mgmt.port} not in {container_ports}"

    # Probes: HTTP on the management port; gRPC probes could not reach the loopback port.
    expected = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for kind, path in expected.items():
        probe = container[kind]
        assert set(probe) & {"grpc", "tcpSocket", "exec"} == set(), f"{kind} must be httpGet"
        assert probe["httpGet"]["path"] == path, kind
        assert port_number(container, probe["httpGet"]["port"]) == mgmt.port, kind
        assert probe["httpGet"].get("scheme", "HTTP") == "HTTP", kind

    # Unix socket: on a shared in-memory emptyDir, group-owned by the pod's fsGroup.
    assert settings.uds is not None
    assert len(str(settings.uds).encode()) <= MAX_SOCKET_PATH
    socket_mount = mount_for(container, settings.uds)
    assert volume(pod, socket_mount["name"])["emptyDir"]["medium"] == "Memory"
    assert settings.uds_group == str(pod["securityContext"]["fsGroup"])
    apps = [c for c in pod["containers"] if not FADER_IMAGE.match(c["image"])]
    assert apps, "an application container shares the pod"
    for app in apps:
        app_mount = mount_for(app, settings.uds)
        assert app_mount["name"] == socket_mount["name"]
        assert app_mount["mountPath"] == socket_mount["mountPath"], "same path in both"
        target = env_of(app).get("FADER_TARGET")
        assert target is None or target == f"unix://{settings.uds}"

    # Exactly one source of snapshots, and it is reachable from the pod.
    if settings.snapshot is not None:
        snapshot_mount = mount_for(container, settings.snapshot)
        assert "subPath" not in snapshot_mount, "a subPath mount never sees ConfigMap updates"
        source = volume(pod, snapshot_mount["name"])["configMap"]["name"]
        key = str(settings.snapshot.relative_to(snapshot_mount["mountPath"]))
        data = config_map(source)
        assert key in data, f"ConfigMap {source} has no key {key}"
        check_snapshot_text(key, data[key])
    else:
        assert settings.control_plane is not None
        check_control_plane_address(item, settings.control_plane)

    # The last-known-good cache must be writable under readOnlyRootFilesystem.
    if settings.cache_dir is not None:
        cache_mount = mount_for(container, settings.cache_dir)
        assert not cache_mount.get("readOnly", False)
        assert "emptyDir" in volume(pod, cache_mount["name"])

    if item.native:
        assert container["restartPolicy"] == "Always"
    else:
        # Classic sidecar: first in line (postStart gates the app), preStop delays its SIGTERM.
        assert pod["containers"][0] is container
        assert "postStart" in container["lifecycle"]
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        assert float(sleep[1]) + settings.shutdown_grace < pod["terminationGracePeriodSeconds"]
    assert settings.shutdown_grace < pod["terminationGracePeriodSeconds"]
    check_hardening(container, pod)


def check_control_plane_address(item: FaderContainer, address: str) -> None:
    """`--control-plane` names the control plane's Service and a port it serves gRPC on."""
    parsed = parse_address(address)
    assert parsed is not None
    labels = item_labels(item)
    assert labels.get("fader/sidecar") == "true", "the NetworkPolicy admits only labelled pods"
    for _, doc in DOCUMENTS:
        if doc["kind"] != "Service":
            continue
        meta = doc["metadata"]
        names = {
            f"{meta['name']}.{meta['namespace']}.svc{suffix}" for suffix in ("", ".cluster.local")
        }
        if parsed.host in names:
            ports = {p["port"]: p for p in doc["spec"]["ports"]}
            assert parsed.port in ports, f"Service {meta['name']} has no port {parsed.port}"
            (plane,) = CONTROLPLANES
            listen = parse_address(controlplane_listen(plane))
            assert listen is not None
            target = ports[parsed.port]["targetPort"]
            assert port_number(plane.container, target) == listen.port
            return
    raise AssertionError(f"--control-plane {address}: no such Service in deploy/kubernetes/")


def item_labels(item: FaderContainer) -> dict[str, str]:
    for file, doc in DOCUMENTS:
        if file == item.file and doc["metadata"]["name"] == item.workload:
            return dict(doc["spec"]["template"]["metadata"]["labels"])
    raise AssertionError(item.id)


def controlplane_listen(item: FaderContainer) -> str:
    """--listen from the args, without running anything (the full parse is tested below)."""
    for arg in expanded_args(item.container):
        if arg.startswith("--listen="):
            return arg.split("=", 1)[1]
    return "127.0.0.1:8017"


def check_hardening(container: dict[str, Any], pod: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert context["runAsUser"] == UID and context["runAsGroup"] == UID
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


@pytest.mark.parametrize("item", CONTROLPLANES, ids=lambda c: c.id)
def test_controlplane_args_probes_and_service(
    item: FaderContainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = controlplane_args(item, monkeypatch)
    container = item.container
    listen = parse_address(args.listen)
    status = parse_address(args.http_listen)
    assert listen is not None and status is not None
    # Sidecars in other pods dial it, kubelet probes /healthz: both off loopback.
    assert not is_loopback(listen.host) and not is_loopback(status.host)
    ports = {p["containerPort"] for p in container["ports"]}
    assert {listen.port, status.port} <= ports
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["path"] == "/healthz"
        assert port_number(container, probe["port"]) == status.port

    # --snapshot DIR is a ConfigMap directory whose snapshots the sidecars would accept.
    snapshot_mount = mount_for(container, Path(args.snapshot))
    assert Path(args.snapshot) == Path(snapshot_mount["mountPath"])
    data = config_map(volume(item.pod, snapshot_mount["name"])["configMap"]["name"])
    assert data
    for key, text in data.items():
        check_snapshot_text(key, text)
    check_hardening(container, item.pod)

    # The NetworkPolicies open exactly the gRPC port to sidecars.
    policies = [doc for _, doc in DOCUMENTS if doc["kind"] == "NetworkPolicy"]
    ingress_ports = {
        p["port"]
        for doc in policies
        if doc["metadata"].get("namespace") == "fader-system"
        for rule in doc["spec"].get("ingress", [])
        for p in rule.get("ports", [])
    }
    assert listen.port in ingress_ports
    egress_ports = {
        p["port"]
        for doc in policies
        for rule in doc["spec"].get("egress", [])
        for p in rule.get("ports", [])
    }
    assert listen.port in egress_ports


def probe_paths() -> set[str]:
    return {
        item.container[kind]["httpGet"]["path"]
        for item in SIDECARS
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }


def test_probe_paths_answer_200_on_a_real_management_listener(
    demo_sidecar: RunningSidecar,
) -> None:
    paths = probe_paths()
    assert paths == {"/readyz", "/healthz"}
    for path in sorted(paths):
        code, body = http_get(demo_sidecar.mgmt_url + path)
        assert code == 200, (path, body)


def dockerfile_instructions() -> dict[str, str]:
    """Last value of each instruction, continuation lines joined (enough for this file)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found[keyword.upper()] = rest.strip()
    return found


def test_dockerfile_matches_the_cli() -> None:
    import json

    found = dockerfile_instructions()
    assert json.loads(found["ENTRYPOINT"]) == ["fader", "serve"]
    default = load_settings(json.loads(found["CMD"]), {})
    assert found["USER"] == f"{UID}:{UID}"
    assert found["STOPSIGNAL"] == "SIGTERM"
    mgmt = default.mgmt_listen
    assert isinstance(mgmt, Address)
    assert str(mgmt.port) in found["EXPOSE"].split()
    assert f"127.0.0.1:{mgmt.port}/healthz" in found["HEALTHCHECK"]
