"""`fader evaluate` and `fader validate` as scripts use them: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fader.rules.builders import flag, snapshot_doc

DEMO = Path(__file__).resolve().parents[1] / "sidecar" / "demo" / "demo.json"


def _fader(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_evaluate_jsonl_contract() -> None:
    cases = [
        {"flag": "new-checkout", "key": "user-1", "bucketing_key": None, "attributes": {}},
        {"flag": "pricing-tier", "key": "u", "attributes": {"plan": "pro", "age": 30}},
        {"flag": "kill-switch-demo", "key": "anyone"},
        {"flag": "missing", "key": "k"},
    ]
    proc = _fader(
        "evaluate", "--snapshot", str(DEMO), stdin="".join(json.dumps(c) + "\n" for c in cases)
    )
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[0] == {
        "flag": "new-checkout",
        "key": "user-1",
        "treatment": "on",
        "config": '{"color":"green"}',
        "label": "default rule",
        "version": 1,
    }
    assert (out[1]["treatment"], out[1]["config"]) == ("premium", '{"limit":100}')
    assert (out[2]["treatment"], out[2]["label"]) == ("safe", "killed")
    assert (out[3]["treatment"], out[3]["label"], out[3]["config"]) == (
        "control",
        "definition not found",
        None,
    )


def test_evaluate_keeps_line_alignment_on_bad_input() -> None:
    stdin = (
        'garbage\n{"flag": "new-checkout"}\n{"flag": "new-checkout", "key": "user-2"}\n'
        '{"flag": "new-checkout", "key": "a\\ud800"}\n'
    )
    proc = _fader("evaluate", "--snapshot", str(DEMO), stdin=stdin)
    assert proc.returncode == 1
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[0]["line"] == 1 and "invalid JSON" in out[0]["error"]
    assert out[1] == {"line": 2, "error": "'key' must be a non-empty string"}
    assert out[2]["treatment"] == "off"
    assert out[3]["line"] == 4 and "lone UTF-16 surrogate" in out[3]["error"]


def test_evaluate_refuses_an_invalid_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(snapshot_doc(flag("f", seed="x"))))
    proc = _fader("evaluate", "--snapshot", str(path), stdin="")
    assert proc.returncode == 1
    assert "$.flags[0].seed" in proc.stderr


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    ok = _fader("validate", str(DEMO))
    assert ok.returncode == 0, ok.stderr
    assert "valid: version 1, 5 active flags" in ok.stdout
    bad = tmp_path / "bad.json"
    doc = snapshot_doc(flag("f", algo=7), flag("g", trafficAllocation=101))
    bad.write_text(json.dumps(doc))
    proc = _fader("validate", str(bad))
    assert proc.returncode == 1
    assert "flag 'f' at $.flags[0].algo" in proc.stderr
    assert "flag 'g' at $.flags[1].trafficAllocation" in proc.stderr
    missing = _fader("validate", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_usage_error_exit_code() -> None:
    assert _fader("evaluate").returncode == 2


def test_version() -> None:
    proc = _fader("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("fader ")


def test_evaluate_answers_every_line_in_place_and_refuses_what_the_lanes_refuse() -> None:
    good = '{"flag": "new-checkout", "key": "user-2"}'
    stdin = "\n".join(
        [
            good,
            "",
            '{"flag": "pricing-tier", "key": "u", "atributes": {"plan": "pro"}}',
            '{"flag": "pricing-tier", "key": "u", "attributes": {"plan": {"tier": "pro"}}}',
            '{"flag": "f", "key": "u", "attributes": {"a": ' + "[" * 1100 + "]" * 1100 + "}}",
            good,
        ]
    )
    proc = _fader("evaluate", "--snapshot", str(DEMO), stdin=stdin + "\n")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.split("\n")
    assert len(lines) == 7 and lines[-1] == "" and lines[1] == ""
    assert json.loads(lines[0])["treatment"] == json.loads(lines[5])["treatment"] == "off"
    assert json.loads(lines[2]) == {
        "line": 3,
        "error": "unknown key 'atributes' (a case has flag, key, bucketing_key, attributes)",
    }
    assert json.loads(lines[3]) == {
        "line": 4,
        "error": "attributes['plan']: dict is not one of string, integer, float, boolean, "
        "array of strings, timestamp",
    }
    assert "nesting limit" in json.loads(lines[4])["error"]


def test_a_plain_flagd_file_validates_and_evaluates(tmp_path: Path) -> None:
    flags = {
        "flags": {
            "beta": {
                "state": "ENABLED",
                "variants": {"on": {"color": "red"}, "off": {}},
                "defaultVariant": "off",
                "targeting": {"if": [{"in": [{"var": "email"}, ["ann@x.io"]]}, "on"]},
            }
        }
    }
    good = tmp_path / "flags.flagd.json"
    good.write_text(json.dumps(flags))
    proc = _fader("validate", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "valid: no version (flagd file), 1 active flags" in proc.stdout
    proc = _fader(
        "evaluate",
        "--snapshot",
        str(good),
        stdin='{"flag": "beta", "key": "k", "attributes": {"email": "ann@x.io"}}\n',
    )
    assert json.loads(proc.stdout) == {
        "flag": "beta",
        "key": "k",
        "treatment": "on",
        "config": '{"color":"red"}',
        "label": "targeting match",
        "version": 0,
    }
    flags["flags"]["beta"]["defaultVariant"] = "maybe"
    bad = tmp_path / "bad.flagd.json"
    bad.write_text(json.dumps(flags))
    proc = _fader("validate", str(bad))
    assert proc.returncode == 1
    assert (
        f"{bad}: error: flag 'beta' at $.flags[\"beta\"].defaultVariant: 'maybe' is not one of "
        "the variants" in proc.stderr
    )


def test_validate_applies_the_serve_limits_and_takes_files_a_directory_and_stdin(
    tmp_path: Path,
) -> None:
    two = tmp_path / "two.json"
    two.write_text(json.dumps(snapshot_doc(flag("f"), flag("g"))))
    limited = _fader("validate", "--max-flags", "1", str(two))
    assert limited.returncode == 1
    assert "snapshot has 2 flags, more than --max-flags 1" in limited.stderr
    small = _fader("validate", "--max-snapshot-bytes", "10", str(two))
    assert small.returncode == 1 and "more than --max-snapshot-bytes 10" in small.stderr

    (tmp_path / "notes.txt").write_text("not a snapshot")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(snapshot_doc(flag("f", algo=7))))
    every = _fader("validate", str(DEMO), str(tmp_path))
    assert every.returncode == 1
    assert f"{DEMO}: valid" in every.stdout and f"{two}: valid" in every.stdout
    assert f"{bad}: invalid (1 error)" in every.stderr and "notes.txt" not in every.stderr

    piped = _fader("validate", "-", stdin=DEMO.read_text())
    assert piped.returncode == 0 and "-: valid: version 1" in piped.stdout
    usage = _fader("validate", "--max-flags", "many", str(two))
    assert usage.returncode == 2 and "'many' is not a whole number" in usage.stderr


def test_validate_a_directory_without_snapshots_is_an_error(tmp_path: Path) -> None:
    proc = _fader("validate", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr == f"fader validate: {tmp_path}: no snapshot files (.json, .msgpack, .mpk)\n"
