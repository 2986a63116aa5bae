"""tools/genproto.py: one command, one fenced package, imports rewritten into the fence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cross_file_imports_are_fenced(tmp_path: Path) -> None:
    protos = tmp_path / "proto"
    (protos / "fader" / "v9").mkdir(parents=True)
    (protos / "fader" / "v9" / "common.proto").write_text(
        'syntax = "proto3";\npackage fader.v9;\nmessage Thing { string name = 1; }\n'
    )
    (protos / "fader" / "v9" / "svc.proto").write_text(
        'syntax = "proto3";\npackage fader.v9;\nimport "fader/v9/common.proto";\n'
        "message Box { Thing thing = 1; }\n"
        "service Things { rpc Get(Box) returns (Thing); }\n"
    )
    out = tmp_path / "pkg" / "fader" / "pb"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "genproto.py"),
            "--proto-root",
            str(protos),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    generated = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "fader/v9/svc_pb2.py",
        "fader/v9/svc_pb2_grpc.py",
        "fader/v9/common_pb2.py",
        "fader/v9/__init__.py",
        "__init__.py",
    } <= generated
    for path in out.rglob("*.py*"):
        text = path.read_text()
        assert "from fader.v9" not in text and "import fader.v9" not in text, path
    assert "from fader.pb.fader.v9 import common_pb2" in (out / "fader/v9/svc_pb2.py").read_text()
    # The fenced package imports, and its messages work, from a fresh interpreter.
    (tmp_path / "pkg" / "fader" / "__init__.py").write_text("")
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fader.pb.fader.v9 import svc_pb2, svc_pb2_grpc\n"
            "print(svc_pb2.Box(thing={'name': 'x'}).thing.name, svc_pb2_grpc.ThingsStub)",
        ],
        cwd=tmp_path / "pkg",
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("x ")


def test_regeneration_removes_stale_modules(tmp_path: Path) -> None:
    protos = tmp_path / "proto" / "fader" / "v1"
    protos.mkdir(parents=True)
    (protos / "a.proto").write_text('syntax = "proto3";\npackage fader.v1;\nmessage A {}\n')
    out = tmp_path / "out"
    args = [
        sys.executable,
        str(REPO / "tools" / "genproto.py"),
        "--proto-root",
        str(tmp_path / "proto"),
        "--out",
        str(out),
    ]
    subprocess.run(args, check=True, capture_output=True)
    (protos / "a.proto").rename(protos / "b.proto")
    subprocess.run(args, check=True, capture_output=True)
    assert not (out / "fader" / "v1" / "a_pb2.py").exists()
    assert (out / "fader" / "v1" / "b_pb2.py").exists()


def test_names_are_fenced_at_any_package_depth() -> None:
    """flagd's protos are three packages deep (flagd.evaluation.v1): their generated modules
    too must name themselves inside the fence, as fader.v1's do."""
    from fader.pb.fader.v1 import evaluation_pb2 as fader_v1
    from fader.pb.flagd.evaluation.v1 import evaluation_pb2 as flagd_v1
    from fader.pb.flagd.evaluation.v2 import evaluation_pb2_grpc as flagd_v2_grpc

    assert fader_v1.GetTreatmentRequest.__module__ == "fader.pb.fader.v1.evaluation_pb2"
    assert (
        flagd_v1.ResolveBooleanRequest.__module__ == "fader.pb.flagd.evaluation.v1.evaluation_pb2"
    )
    source = Path(flagd_v2_grpc.__file__).read_text()
    assert "from fader.pb.flagd.evaluation.v2 import evaluation_pb2" in source
