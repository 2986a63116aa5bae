"""`fader serve --snapshot flags.flagd.json`: a plain flagd flags file, exactly as flagd reads
it, is a whole snapshot. A real process serves it over OFREP and flagd sync; editing the file
(it has no version) applies the new flags as the next version."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.harness import SIDECAR_ARGS, serve_process
from tests.vectors import flagd_vector

TIMEOUT = 20.0


def ofrep(address: str, flag: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{address}/ofrep/v1/evaluate/flags/{flag}", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def test_a_plain_flagd_file_is_served_and_reloaded(tmp_path: Path) -> None:
    doc = json.loads(flagd_vector("evaluator/flags/testkit-flags.json").read_text())
    path = tmp_path / "flags.flagd.json"
    write(path, doc)
    args = [
        "--snapshot",
        str(path),
        "--ofrep-listen",
        "127.0.0.1:0",
        "--sync-listen",
        "127.0.0.1:0",
        *SIDECAR_ARGS,
    ]
    with serve_process(args, tmp_path) as serve:
        serve.wait_listening()
        found = re.search(r"ofrep=(\S+)", serve.log)
        assert found, serve.log
        address = found.group(1)
        assert ofrep(address, "string-flag")["value"] == "hi"
        doc["flags"]["string-flag"]["defaultVariant"] = "parting"
        write(path, doc)
        deadline = time.monotonic() + TIMEOUT
        while ofrep(address, "string-flag")["value"] != "bye":
            assert time.monotonic() < deadline, serve.log
            time.sleep(0.1)
        assert "applied snapshot version 2" in serve.log
