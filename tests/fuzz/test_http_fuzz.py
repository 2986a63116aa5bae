"""Hostile request bodies to a real `fader serve` over HTTP: OFREP (one flag and bulk) and
flagd's evaluation API over Connect (JSON), the doors a browser-side or any-language client
reaches. Structure-aware, like tests/fuzz/hostile.py for snapshots: nesting around and far
beyond the limit, numbers too large or not numbers, a wrong type at every path of a valid
request, unknown and duplicate keys, invalid UTF-8, truncation and flipped bytes.

Every answer must be deliberate (a 2xx/4xx with a JSON body, never a 5xx), the process must
keep serving, and its log must show no traceback.
"""

from __future__ import annotations

import copy
import http.client
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.api.test_ofrep import FLAGD_FLAGS
from tests.fader.rules.builders import flag, snapshot_doc
from tests.fuzz.hostile import WRONG_TYPES, paths, set_at
from tests.integration.harness import free_port, serve_process, short_tmp
from tests.integration.release_processes import control_plane

OFREP_ONE = "/ofrep/v1/evaluate/flags/greeting"
OFREP_ALL = "/ofrep/v1/evaluate/flags"
CONNECT = "/flagd.evaluation.v1.Service/ResolveString"
CONTEXT: dict[str, Any] = {
    "targetingKey": "user-1",
    "user": {"plan": "pro", "tags": ["a", "b"]},
    "n": 3,
    "ok": True,
}
VALID: dict[str, dict[str, Any]] = {
    OFREP_ONE: {"context": CONTEXT},
    OFREP_ALL: {"context": CONTEXT},
    CONNECT: {"flagKey": "greeting", "context": CONTEXT},
}


WRITE = {"reason": "fuzz", "author": "fuzzer"}
FLAG = flag("banner", defaultTreatment="off")
PLANE: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/api/v1/flags/banner"): {"definition": FLAG, **WRITE},
    ("POST", "/api/v1/flags/banner/dial"): {"percent": 50, "treatment": "on", **WRITE},
    ("POST", "/api/v1/flags/banner/kill"): WRITE,
}


def _with(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    return set_at(copy.deepcopy(document), path, value)


def hostile_bodies(valid: dict[str, Any], seed: int) -> Iterator[bytes]:
    """Deterministic hostile variants of one valid request body."""
    rng = random.Random(seed)
    text = json.dumps(valid).encode()
    yield text  # the valid one, as a control
    for levels in (99, 101, 1100, 100_000):
        yield b'{"context": {"a": ' + b"[" * levels + b"]" * levels + b"}}"
    for number in ("1e999", "-1e999", "NaN", "Infinity", "1" + "0" * 5000, "-0"):
        yield text[:-1] + f', "n": {number}}}'.encode()  # at the top level
        if b'"n": 3' in text:  # and where a number is read (the evaluation context)
            yield text.replace(b'"n": 3', f'"n": {number}'.encode())
    for index, path in enumerate(paths(valid)):  # a wrong type at every path
        for value in (WRONG_TYPES[index % len(WRONG_TYPES)], WRONG_TYPES[-index % 11]):
            yield json.dumps(_with(valid, path, value)).encode()
    for key in ("flagKey", "context", "targetingKey", "", "\u0000", "contxt"):  # unknown/dups
        yield text[:1] + json.dumps(key).encode() + b': "dup", ' + text[1:]
    for _ in range(15):  # invalid UTF-8, truncation, flipped bytes
        at = rng.randrange(len(text))
        yield text[:at] + rng.choice((b"\x84", b"\xff\xfe", b"\xc3")) + text[at:]
        yield text[: rng.randrange(len(text))]
        flipped = bytearray(text)
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        yield bytes(flipped)
    yield b""
    yield b"null"
    yield b"[]"


def write_mixed_snapshot(path: Path) -> None:
    document = snapshot_doc(flag("banner", defaultTreatment="off"), version=7)
    document["flagd"] = {"flags": FLAGD_FLAGS}
    path.write_text(json.dumps(document))


def post(port: int, path: str, body: bytes, method: str = "POST") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_every_hostile_body_gets_a_deliberate_answer_from_a_real_process() -> None:
    with short_tmp() as tmp:
        snapshot = tmp / "mixed.json"
        write_mixed_snapshot(snapshot)
        port = free_port()
        args = ["--snapshot", str(snapshot), "--ofrep-listen", f"127.0.0.1:{port}"]
        args += ["--grpc-listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0"]
        with serve_process(args, tmp) as sidecar:
            sidecar.wait_listening()
            tried, statuses = 0, set()
            undeliberate: list[str] = []
            for seed, (path, valid) in enumerate(VALID.items()):
                for body in hostile_bodies(valid, seed):
                    status, answer = post(port, path, body)
                    tried += 1
                    statuses.add(status)
                    if status >= 500 or not isinstance(json.loads(answer or b"null"), dict):
                        undeliberate.append(f"{path} {body[:120]!r} -> {status} {answer[:200]!r}")
            assert not undeliberate, "\n".join(undeliberate[:20])
            assert post(port, CONNECT, json.dumps(VALID[CONNECT]).encode())[0] == 200
            assert sidecar.process.poll() is None
            log = sidecar.log
        assert "Traceback" not in log, log[-4000:]
        assert {200, 400} <= statuses, statuses  # the valid controls answered, the rest refused
        print(f"{tried} hostile HTTP requests (OFREP, flagd Connect), statuses {sorted(statuses)}")


def test_every_hostile_body_gets_a_deliberate_answer_from_a_real_control_plane() -> None:
    """The control plane's write API: the flag documents and release commands an editor (or
    a script gone wrong) sends."""
    with short_tmp() as tmp, control_plane(tmp, "--data-dir", str(tmp / "data")) as plane:
        tried, statuses = 0, set()
        undeliberate: list[str] = []
        for seed, ((method, path), valid) in enumerate(PLANE.items()):
            for body in hostile_bodies(valid, seed):
                status, answer = post(plane.http_port, path, body, method)
                tried += 1
                statuses.add(status)
                if status >= 500 or not isinstance(json.loads(answer or b"null"), dict):
                    undeliberate.append(f"{path} {body[:120]!r} -> {status} {answer[:200]!r}")
        assert not undeliberate, "\n".join(undeliberate[:20])
        assert plane.process.process.poll() is None
        log = plane.process.log
    assert "Traceback" not in log, log[-4000:]
    assert {200, 400} <= statuses or {200, 422} <= statuses, statuses
    print(f"{tried} hostile HTTP requests (control plane API), statuses {sorted(statuses)}")
