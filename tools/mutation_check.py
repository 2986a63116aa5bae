"""Plant plausible bugs one at a time; each must fail the tests that exist to catch it.

A test suite can pass for the wrong reason: a race that never lands, an assertion inside a
thread, a check too weak to notice the bug it is named after. This check keeps the suite
honest about a FIXED list of bugs a reviewer would plant (MUTANTS below: the engine, the
snapshot path, the lookup path, the flagd mapping and the telemetry pipeline). For each one
it names the tests meant to catch it, and fails when any mutant survives them.

How it runs, without ever touching the working tree (others may be editing it):
1. the sources and tests are copied to a temporary directory, and every mutant's snippet is
   checked to occur exactly once in its file there: a missing snippet means the code moved,
   and the check fails loudly instead of passing a mutant it could not plant;
2. the targeted tests run once on the unmutated copy and must pass (a test that already
   fails would "catch" every mutant);
3. for each mutant: patch the copy, run its tests with ``-x``, restore the file. Failing
   tests are the catch; passing tests are a survivor.

It prints which test caught which mutant and exits 1 on a survivor, a missing snippet, a
failing baseline, or a test run that could not start (a collection error is reported, never
counted as a catch). CI runs it after the test suite (``.ci/run``).

Usage: python tools/mutation_check.py [--list] [--only SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the targeted tests need; the generated protobuf code is inside clients/python.
COPIED = ("sidecar", "clients/python", "tests", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "artifacts", "*.egg-info")
RUN_TIMEOUT = 300.0  # seconds for one pytest run; the tests' own timeout (120 s) fires first
FAILED_LINE = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


@dataclass(frozen=True)
class Mutant:
    """One planted bug: `find` (exact, once in `path`) becomes `replace`."""

    name: str
    bug: str
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # ---- lookup path: one snapshot per request -------------------------------------------
    Mutant(
        "core-reads-snapshot-per-item",
        "the evaluation core reads the store's current snapshot for every item",
        "sidecar/core/evaluator.py",
        "            (key, bucketing_key, flag, evaluate(key, flag, bucketing_key, attributes))\n",
        "            (key, bucketing_key, flag, self.store.current.evaluate(  # type: ignore\n"
        "                key, flag, bucketing_key, attributes))\n",
        (
            "tests/core/test_evaluator.py::"
            "test_a_request_is_answered_from_one_snapshot_even_when_a_swap_lands_inside_it",
            "tests/integration/test_consistency.py::"
            "test_a_swap_inside_every_request_never_mixes_versions",
        ),
    ),
    Mutant(
        "lane-reads-snapshot-per-item",
        "EvaluateBatch evaluates item by item, each on Evaluator.snapshot() taken anew",
        "sidecar/api/fader_v1.py",
        '        answers = self._evaluator.evaluate(snap, lookups, "EvaluateBatch", started)\n',
        "        answers = [\n"
        "            answer\n"
        "            for lookup in lookups\n"
        "            for answer in self._evaluator.evaluate(\n"
        '                self._evaluator.snapshot(), [lookup], "EvaluateBatch", started\n'
        "            )\n"
        "        ]\n",
        (
            "tests/integration/test_consistency.py::"
            "test_a_swap_inside_every_request_never_mixes_versions",
        ),
    ),
    Mutant(
        "fast-lane-skips-attribute-size",
        "the fast lane checks the attribute count but takes the values as sent, skipping "
        "--max-attribute-size",
        "sidecar/api/fastlane.py",
        "            attributes = self._admit("
        'attributes, prefix + "attributes", _timestamp_seconds)\n',
        '            self._core.policy.check_count(len(attributes), prefix + "attributes")\n'
        "            attributes = {n: _timestamp_seconds(v) or v for n, v in attributes.items()}\n",
        ("tests/api/test_lane_limits.py::test_attribute_limits",),
    ),
    Mutant(
        "fast-lane-hangs-after-garbage",
        "the fast lane answers a protocol error but leaves the connection open (the client "
        "waits forever)",
        "sidecar/api/fastlane.py",
        '            transport.write(b"".join(out))\n            transport.close()\n'
        "            return\n",
        '            transport.write(b"".join(out))\n            return\n',
        ("tests/api/test_fastlane.py::test_bad_frames_get_an_error_and_close",),
    ),
    # ---- snapshot path -----------------------------------------------------------------------
    Mutant(
        "applier-accepts-stale-version",
        "the Applier forces every swap, so an older snapshot replaces a newer one",
        "sidecar/delivery/apply.py",
        "                self.store.swap(snapshot, force=force)\n",
        "                self.store.swap(snapshot, force=True)\n",
        ("tests/delivery/test_apply.py",),
    ),
    Mutant(
        "swap-frees-the-replaced-snapshot",
        "Store.swap takes the replaced snapshot apart at once instead of retiring it to the "
        "reaper, under requests still reading it",
        "sidecar/delivery/store.py",
        "            self._reaper.retire(previous)\n",
        "            while previous.release_step():\n                pass\n",
        ("tests/delivery/test_store.py::test_concurrent_readers_never_see_a_mix",),
    ),
    Mutant(
        "reaper-frees-a-held-snapshot",
        "the reaper's reference-count threshold is one too high: it frees a snapshot that "
        "one request still holds",
        "sidecar/delivery/reaper.py",
        "_OWN_REFERENCES = 2\n",
        "_OWN_REFERENCES = 3\n",
        ("tests/delivery/test_store.py::test_a_snapshot_in_use_is_not_released",),
    ),
    # ---- engine --------------------------------------------------------------------------
    Mutant(
        "matcher-raises",
        "a numeric matcher's int() of a non-numeric string loses its ValueError guard (the "
        "engine answers control / 'exception')",
        "clients/python/fader/rules/matchers.py",
        "        try:\n            return int(value)\n        except ValueError:\n"
        "            return None\n",
        "        return int(value)\n",
        ("tests/fuzz/test_snapshot_fuzz.py::test_the_corpus_applies_and_never_answers_exception",),
    ),
    Mutant(
        "starts-with-negated",
        "STARTS_WITH answers the opposite",
        "clients/python/fader/rules/matchers.py",
        "        return text is not None and text.startswith(prefixes)\n",
        "        return text is not None and not text.startswith(prefixes)\n",
        ("tests/fader/rules/test_matchers.py",),
    ),
    Mutant(
        "partition-boundary-off-by-one",
        "a key on the last bucket of a partition gets the next partition's treatment "
        "(Split's `covered >= bucket` written `covered > bucket`)",
        "clients/python/fader/rules/compile.py",
        "            return answers[table[index]]\n        return default_result\n\n"
        "    return rollout\n",
        "            return answers[table[min(index + 1, 99)]]\n        return default_result\n\n"
        "    return rollout\n",
        ("tests/fader/rules/test_differential.py::test_every_bucket_boundary_matches_sdk",),
    ),
    Mutant(
        "traffic-allocation-off-by-one",
        "a key whose traffic bucket equals the allocation is left out of the split",
        "clients/python/fader/rules/compile.py",
        "                if index >= traffic_allocation:  # bucket (index + 1) > allocation\n",
        "                if index + 1 >= traffic_allocation:\n",
        ("tests/fader/rules/test_differential.py::test_every_bucket_boundary_matches_sdk",),
    ),
    Mutant(
        "nested-excluded-rbs-continues",
        "a key excluded by a nested rule-based segment continues the exclusion walk instead "
        "of ending it (the Python SDK's early stop)",
        "clients/python/fader/rules/compile.py",
        "        if key in nested.excluded_keys:\n            return False\n",
        "        if key in nested.excluded_keys:\n            continue\n",
        ("tests/fader/rules/test_differential.py::test_regressions_match_sdk",),
    ),
    # ---- flagd mapping: STATIC only for flags that answer everyone alike ---------------------
    Mutant(
        "static-despite-traffic-cut",
        "a flag whose traffic allocation cuts keys out is reported STATIC (providers cache "
        "it by flag key: users get each other's answers)",
        "clients/python/fader/rules/compile.py",
        "    cut = conditions[0].rollout and allocation is not None and allocation < 100\n",
        "    cut = False\n",
        ("tests/api/test_flagd_static.py",),
    ),
    Mutant(
        "static-despite-matchers",
        "a flag whose first condition has matchers is reported STATIC",
        "clients/python/fader/rules/compile.py",
        "    everyone = not conditions[0].matchers\n",
        "    everyone = True\n",
        ("tests/api/test_flagd_static.py",),
    ),
    # ---- telemetry pipeline ------------------------------------------------------------------
    Mutant(
        "uploader-sends-twice",
        "the uploader sends every batch twice",
        "sidecar/telemetry/uploader.py",
        "            await self._upload(request, timeout=self._timeout, metadata=metadata)\n",
        "            await self._upload(request, timeout=self._timeout, metadata=metadata)\n"
        "            await self._upload(request, timeout=self._timeout, metadata=metadata)\n",
        ("tests/telemetry/test_pipeline.py::test_impressions_and_events_are_delivered_in_order",),
    ),
    Mutant(
        "retry-forgets-the-batch",
        "an upload the collector failed transiently is forgotten instead of retried",
        "sidecar/telemetry/pipeline.py",
        "                self._collector_down(answer.code, answer.detail)\n",
        "                self._collector_down(answer.code, answer.detail)\n"
        "                await self._forget(batch, sequence)\n",
        (
            "tests/telemetry/test_pipeline.py::"
            "test_transient_errors_are_retried_through_the_spool_in_order",
        ),
    ),
    Mutant(
        "refused-batch-counted-as-sent",
        "a batch the collector refused for good is counted as sent as well as dropped",
        "sidecar/telemetry/pipeline.py",
        "                    self._collector_refuses(answer.code, answer.detail)\n"
        "                continue\n",
        "                    self._collector_refuses(answer.code, answer.detail)\n",
        (
            "tests/telemetry/test_pipeline.py::"
            "test_permanent_refusal_drops_that_batch_only_and_counts_it",
        ),
    ),
    # ---- signing: a signature vouches only for a snapshot a sidecar would accept ----------
    Mutant(
        "sign-skips-validation",
        "fader sign signs whatever decodes, an invalid snapshot included",
        "sidecar/keys.py",
        "        if validate_bytes(str(args.file), data, fmt, limits_from(args), io.StringIO(), "
        "sys.stderr):\n",
        "        if not (args.file and validate_bytes):  # always false\n",
        (
            "tests/test_keys.py::test_sign_refuses_an_invalid_snapshot_with_validates_report",
            "tests/test_keys.py::test_sign_applies_the_limits_a_sidecar_would",
        ),
    ),
)


@dataclass
class Verdict:
    mutant: Mutant
    outcome: str  # caught | SURVIVED | BROKEN
    detail: str
    seconds: float


def copy_tree(destination: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=IGNORED)
        else:
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def missing_snippets(root: Path, mutants: Sequence[Mutant]) -> list[str]:
    """Every mutant whose snippet is not exactly once in its file."""
    problems = []
    for mutant in mutants:
        path = root / mutant.path
        count = path.read_text(encoding="utf-8").count(mutant.find) if path.exists() else 0
        if count != 1:
            problems.append(
                f"{mutant.name}: the snippet occurs {count} times in {mutant.path} (must be "
                f"once): the code moved, update the mutant\n    {mutant.find!r}"
            )
    return problems


def run_tests(root: Path, tests: Sequence[str], *, stop_first: bool) -> tuple[int, str]:
    """pytest on the copy (its own sources first on the path), output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADER_")}
    env["PYTHONPATH"] = os.pathsep.join((str(root), str(root / "clients" / "python")))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    command += ["-x"] * stop_first
    try:
        done = subprocess.run(
            [*command, *tests],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        output = err.stdout if isinstance(err.stdout, str) else ""
        return -1, output + f"\n(no result in {RUN_TIMEOUT:.0f} s)"
    return done.returncode, done.stdout + done.stderr


def forget_bytecode(path: Path) -> None:
    """A patch can keep a file's size and modification second; never trust its .pyc."""
    for cached in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
        cached.unlink()


def check(root: Path, mutant: Mutant) -> Verdict:
    path = root / mutant.path
    original = path.read_text(encoding="utf-8")
    started = time.monotonic()
    path.write_text(original.replace(mutant.find, mutant.replace, 1), encoding="utf-8")
    forget_bytecode(path)
    try:
        code, output = run_tests(root, mutant.tests, stop_first=True)
    finally:
        path.write_text(original, encoding="utf-8")
        forget_bytecode(path)
    seconds = time.monotonic() - started
    summary = output.partition("short test summary info")[2]  # not the captured logs
    failed = [node for _, node in FAILED_LINE.findall(summary)]
    if code == 0:
        return Verdict(mutant, "SURVIVED", "every targeted test passed", seconds)
    if code == 1 and failed:
        return Verdict(mutant, "caught", ", ".join(failed), seconds)
    tail = "\n".join(output.strip().splitlines()[-15:])
    return Verdict(mutant, "BROKEN", f"pytest exit {code}, no failing test named:\n{tail}", seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--only", nargs="+", default=[], help="mutants whose name contains one")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name}: {mutant.bug}\n    {mutant.path}\n    tests: {mutant.tests}")
        return 0
    if not mutants:
        print("no mutant matches --only", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fader-mutants-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        problems = missing_snippets(root, mutants)
        if problems:
            print("mutation check: cannot plant\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        targeted = list(dict.fromkeys(t for m in mutants for t in m.tests))
        code, output = run_tests(root, targeted, stop_first=False)
        baseline = time.monotonic() - started
        if code != 0:
            print(f"mutation check: the targeted tests fail unmutated:\n{output}", file=sys.stderr)
            return 1
        print(f"baseline: {len(targeted)} targeted test selections pass ({baseline:.0f} s)")
        verdicts = []
        for mutant in mutants:
            verdict = check(root, mutant)
            verdicts.append(verdict)
            print(f"{verdict.outcome:8} {mutant.name} ({verdict.seconds:.0f} s): {verdict.detail}")
            sys.stdout.flush()
    bad = [v for v in verdicts if v.outcome != "caught"]
    total = time.monotonic() - started
    print(
        f"mutation check: {len(verdicts) - len(bad)} of {len(verdicts)} mutants caught "
        f"in {total:.0f} s"
    )
    for verdict in bad:
        print(f"  {verdict.outcome}: {verdict.mutant.name}: {verdict.mutant.bug}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
