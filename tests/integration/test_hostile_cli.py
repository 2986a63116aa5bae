"""Every `fader` command with hostile inputs, in real subprocesses: a clear message and a
non-zero exit, never a Python traceback or an exception's internals."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.harness import REPO, free_port, serve_env, short_tmp

INTERNALS = (
    "Traceback",
    "invalid literal for int()",
    "could not convert string",
    "[Errno",
    "got None",
    "b'",
    "codec can't decode",
    "add_port.cc",
)


@pytest.fixture
def tmp() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def hostile_files(tmp: Path) -> dict[str, Path]:
    files = {
        "deep": b'{"version":1,"flags":' + b"[" * 1100 + b"]" * 1100 + b"}",
        "utf8": b'{"version":1,"flags":[], "x": "\x84"}',
        "noversion": b'{"flags":[]}',
        "flagd_list": b'{"flags":[{"state":"ENABLED"}]}',
        "regex": (
            b'{"version":1,"flags":[{"name":"f","trafficTypeName":"u","seed":1,'
            b'"defaultTreatment":"on","conditions":[{"matcherGroup":{"combiner":"AND",'
            b'"matchers":[{"matcherType":"MATCHES_STRING","stringMatcherData":"\\\\1(",'
            b'"keySelector":{"attribute":"a"}}]},"partitions":[{"treatment":"on","size":100}]}]}]}'
        ),
        "nan": b'{"version": NaN, "flags": []}',
        "huge": b'{"version": 1' + b"0" * 5000 + b', "flags": []}',
        "truncated": b'{"version":1,"flags":[{"name":"f"',
        "empty": b"",
        "list": b"[]",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp / f"{name}.json"
        paths[name].write_bytes(data)
    (tmp / "bad.toml").write_text("max_attributes = 'many'\n")
    return paths


def commands(tmp: Path, files: dict[str, Path]) -> list[list[str]]:
    dead = f"127.0.0.1:{free_port()}"
    missing = str(tmp / "missing.json")
    keys = str(tmp / "keys")
    runs: list[list[str]] = []
    for path in [*files.values(), Path(missing), tmp]:
        runs.append(["validate", str(path)])
        runs.append(["evaluate", "--snapshot", str(path)])
        runs.append(["push", "--target", dead, "--timeout", "2", str(path)])
        runs.append(["sign", "--key", f"{keys}/k.key", "--key-id", "k", str(path)])
    runs += [
        ["keygen", "--out", keys, "--key-id", "k"],  # the second time: the key exists
        ["keygen", "--out", str(files["deep"]), "--key-id", "k"],  # --out is a file
        ["keygen", "--out", keys, "--key-id", "../x"],
        ["serve", "--max-attributes", "many", "--demo"],
        ["serve", "--telemetry-flush-interval", "abc", "--demo"],
        ["serve", "--config", str(tmp / "bad.toml"), "--demo"],
        ["serve", "--config", missing, "--demo"],
        ["serve", "--snapshot", missing],
        ["serve", "--snapshot", str(files["deep"])],
        ["serve", "--snapshot", str(files["utf8"])],
        ["serve", "--trusted-keys", missing, "--demo"],
        ["status", "--control-plane", dead, "--timeout", "1"],
        ["status", "--control-plane", "nonsense", "--timeout", "1"],
        ["controlplane", "--forward", missing, "--listen", dead],
        ["controlplane", "--listen", "nonsense", "--forward", str(files["deep"])],
        ["controlplane", "--max-sidecars", "many"],
        ["flags", "list", "--api", f"http://{dead}"],
        ["rollout", "status", "f", "--api", f"http://{dead}"],
        ["metrics", "list", "--api", f"http://{dead}"],
        ["guardrails", "list", "--api", f"http://{dead}"],
    ]
    return runs


def run(args: list[str], stdin: str) -> tuple[list[str], int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=serve_env(),
        cwd=REPO,
        errors="replace",
    )
    return args, proc.returncode, proc.stdout + proc.stderr


def test_no_command_shows_python_internals(tmp: Path) -> None:
    files = hostile_files(tmp)
    keygen = run(["keygen", "--out", str(tmp / "keys"), "--key-id", "k"], "")
    assert keygen[1] == 0, keygen
    cases = '{"flag": "f", "key": "k"}\n\n{"flag": 1}\n' + "[" * 2000 + "\n\x84\n"
    with socket.socket() as taken, ThreadPoolExecutor(max_workers=4) as pool:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = f"127.0.0.1:{taken.getsockname()[1]}"
        runs = [*commands(tmp, files), ["serve", "--demo", "--grpc-listen", in_use]]
        runs.append(["serve", "--demo", "--mgmt-listen", in_use])
        results = list(pool.map(lambda a: run(a, cases), runs))
    shown = [
        f"fader {' '.join(args)} -> {code}:\n{output}"
        for args, code, output in results
        if code == 0 or any(i in output for i in INTERNALS)
    ]
    assert not shown, "\n\n".join(shown)
    said = {" ".join(args): output for args, _, output in results}
    for args, fragment in clear_messages(tmp, files, in_use):
        assert fragment in said[" ".join(args)], (args, said[" ".join(args)])
    print(f"{len(results)} hostile command lines, no internals shown")


def clear_messages(tmp: Path, files: dict[str, Path], in_use: str) -> list[tuple[list[str], str]]:
    """What some of the runs above must say instead of Python's internals (the issue's list)."""
    sign = ["sign", "--key", f"{tmp}/keys/k.key", "--key-id", "k"]
    return [
        (["keygen", "--out", str(tmp / "keys"), "--key-id", "k"], "k.key already exists"),
        (["validate", str(files["flagd_list"])], "(a flagd flags file has 'flags' as an object"),
        (["validate", str(files["regex"])], "(RE2 syntax): invalid escape sequence: \\1"),
        (["validate", str(files["utf8"])], "a string is not UTF-8 text (byte 0x84)"),
        (["validate", str(tmp / "missing.json")], "cannot read: No such file or directory"),
        ([*sign, str(files["regex"])], "is not a valid snapshot: not signed"),
        (["serve", "--config", str(tmp / "bad.toml"), "--demo"], "max_attributes: 'many' is not"),
        (["serve", "--max-attributes", "many", "--demo"], "--max-attributes: 'many' is not a"),
        (["serve", "--demo", "--grpc-listen", in_use], f"cannot listen on {in_use}: the port is"),
    ]
