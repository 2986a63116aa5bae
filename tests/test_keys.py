"""`fader sign` validates before it signs: an invalid snapshot (or one over the --max-*
limits) gets `fader validate`'s own report, exit 1 and no signature."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from sidecar import cli
from sidecar.keys import keygen

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sidecar" / "demo" / "demo.json"
# a typo'd key: the flag has no defaultTreatment, and validate says which key was meant
TYPO = (
    '{"version": 3, "flags": [{"name": "f", "trafficTypeName": "user", "seed": 1, '
    '"defaultTreatmen": "on", "conditions": []}]}'
)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def sign_args(tmp_path: Path, *extra: str) -> list[str]:
    if not (tmp_path / "k.key").exists():
        keygen(tmp_path, "k")
    return ["sign", "--key", str(tmp_path / "k.key"), "--key-id", "k", *extra]


def test_sign_refuses_an_invalid_snapshot_with_validates_report(tmp_path: Path) -> None:
    snapshot = tmp_path / "typo.json"
    snapshot.write_text(TYPO)
    validated = run(["validate", str(snapshot)])
    assert validated[0] == 1
    code, out, err = run(sign_args(tmp_path, str(snapshot)))
    assert code == 1
    assert out == ""
    assert validated[2] in err  # every warning and error line, word for word
    assert "did you mean 'defaultTreatment'?" in err
    assert f"fader sign: {snapshot} is not a valid snapshot: not signed" in err
    assert not (tmp_path / "typo.json.sig").exists()


def test_sign_applies_the_limits_a_sidecar_would(tmp_path: Path) -> None:
    snapshot = tmp_path / "demo.json"
    shutil.copy(DEMO, snapshot)
    code, _, err = run(sign_args(tmp_path, "--max-flags", "2", str(snapshot)))
    assert code == 1
    assert "more than --max-flags 2" in err
    assert not (tmp_path / "demo.json.sig").exists()

    code, out, err = run(sign_args(tmp_path, str(snapshot)))
    assert code == 0, err
    assert out.startswith("signed version 1 with key k until ")
    assert (tmp_path / "demo.json.sig").exists()
