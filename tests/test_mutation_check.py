"""The mutation check's list stays plantable: every mutant's snippet is in its file exactly
once and every test it names exists, so a change to the code or the tests shows up in the
test run of whoever made it, not only when CI runs tools/mutation_check.py."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mutation_check", REPO / "tools/mutation_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


CHECK = _load()


def test_every_snippet_is_in_its_file_once() -> None:
    assert CHECK.missing_snippets(REPO, CHECK.MUTANTS) == []


@pytest.mark.parametrize("mutant", CHECK.MUTANTS, ids=lambda m: str(m.name))
def test_every_named_test_exists(mutant: Any) -> None:
    for node in mutant.tests:
        path, _, name = node.partition("::")
        source = (REPO / path).read_text(encoding="utf-8")
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", source, re.MULTILINE), node


def test_names_are_unique_and_each_mutant_changes_its_file() -> None:
    names = [m.name for m in CHECK.MUTANTS]
    assert len(names) == len(set(names))
    assert all(m.find != m.replace and m.tests for m in CHECK.MUTANTS)


def test_a_moved_snippet_is_reported(tmp_path: Path) -> None:
    """Drift fails loudly: a snippet that is not in its file is named, never skipped."""
    (tmp_path / "code.py").write_text("x = 1\n")
    mutant = CHECK.Mutant("m", "bug", "code.py", "x = 2\n", "x = 3\n", ("t.py",))
    [problem] = CHECK.missing_snippets(tmp_path, [mutant])
    assert problem.startswith("m: the snippet occurs 0 times in code.py")
