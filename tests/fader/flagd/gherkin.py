"""A small Gherkin reader for the flagd testbed's evaluation features (tests/vectors/flagd).

It expands every Scenario Outline row into a `Case` with its steps filled in and its tags
(inherited Feature -> Scenario -> Examples), and reads the steps the evaluation features
use into a `Check`: the flag, its type and fallback, the context, and what is expected.
Cells follow Gherkin escaping (README of the vectors): only backslash-pipe, double
backslash and backslash-n are escapes; every other backslash stays.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.vectors import FLAGD

STEP_WORDS = ("Given ", "And ", "When ", "Then ", "But ")


@dataclass
class Case:
    feature: str
    name: str
    tags: frozenset[str]
    steps: list[tuple[str, list[list[str]]]]  # (text, data table rows)

    @property
    def id(self) -> str:
        return f"{self.feature}:{self.name}"


def _cell(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "|\\n":
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [_cell(cell.strip()) for cell in cells]


def _fill(text: str, values: dict[str, str]) -> str:
    """An outline step with its <placeholders> replaced by one row's cells."""
    return re.sub(r"<([^>]+)>", lambda m: values.get(m.group(1), m.group(0)), text)


def read_feature(path: Path) -> list[Case]:
    lines = [line.rstrip("\n") for line in path.read_text().splitlines()]
    cases: list[Case] = []
    feature_tags: set[str] = set()
    pending: set[str] = set()
    scenario: dict[str, Any] | None = None
    background: list[tuple[str, list[list[str]]]] = []
    section = ""

    def finish() -> None:
        if scenario is None:
            return
        steps = background + scenario["steps"]
        if not scenario["outline"]:
            cases.append(Case(path.stem, scenario["name"], frozenset(scenario["tags"]), steps))
            return
        for block_tags, header, rows in scenario["examples"]:
            for row in rows:
                values = dict(zip(header, row, strict=True))
                filled = [(_fill(text, values), t) for text, t in steps]
                name = f"{scenario['name']} {row}"
                cases.append(
                    Case(path.stem, name, frozenset(scenario["tags"] | block_tags), filled)
                )

    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            pending |= set(line.split())
            continue
        if line.startswith("Feature:"):
            feature_tags, pending = pending, set()
            continue
        if line.startswith("Background:"):
            section, pending = "background", set()
            continue
        if line.startswith(("Scenario Outline:", "Scenario:")):
            finish()
            outline = line.startswith("Scenario Outline:")
            name = line.split(":", 1)[1].strip()
            tags = feature_tags | pending
            scenario = {"name": name, "tags": tags, "steps": [], "outline": outline, "examples": []}
            section, pending = "steps", set()
            continue
        if line.startswith(("Examples:", "Scenarios:")):
            assert scenario is not None
            scenario["examples"].append((frozenset(pending), None, []))
            section, pending = "examples", set()
            continue
        if line.startswith("|"):
            row = _row(line)
            if section == "examples":
                assert scenario is not None
                tags, header, rows = scenario["examples"][-1]
                if header is None:
                    scenario["examples"][-1] = (tags, row, rows)
                else:
                    rows.append(row)
            else:
                target = background if section == "background" else scenario["steps"]  # type: ignore[index]
                target[-1][1].append(row)
            continue
        if line.startswith(STEP_WORDS):
            text = line.split(" ", 1)[1]
            (background if section == "background" else scenario["steps"]).append((text, []))  # type: ignore[index]
    finish()
    return cases


@dataclass
class Check:
    """One evaluation and what it must give."""

    flag: str
    kind: str  # boolean, string, integer, float, object
    fallback: Any
    context: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    expect_value: bool = False
    reason: str | None = None
    error_code: str | None = None
    metadata: dict[str, Any] | None = None


KINDS = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Float": "float",
    "Object": "object",
}


def typed(kind: str, text: str) -> Any:
    """The testkit's typing of a cell."""
    if kind == "boolean":
        return text.lower() in ("yes", "true", "t", "1")
    if kind == "integer":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "object":
        return json.loads(text.replace('\\"', '"'))
    return text


_FLAG = re.compile(r'an? (\w+)-flag with key "(.*?)" and a (?:fallback|default) value "(.*)"$')
_KEY = re.compile(r'a context containing a key "(.*?)", with type "(\w+)" and with value "(.*)"$')
_TARGETING = re.compile(r'a context containing a targeting key with value "(.*)"$')
_NESTED = re.compile(
    r'a context containing a nested property with outer key "(.*?)" and inner key "(.*?)", '
    r'with value "(.*)"$'
)


def check_of(case: Case) -> Check:
    check: Check | None = None
    for text, table in case.steps:
        if match := _FLAG.match(text):
            kind = KINDS[match.group(1)]
            check = Check(match.group(2), kind, typed(kind, match.group(3)))
            continue
        if check is None:  # "an evaluator", a provider's options: before the flag
            continue
        if match := _KEY.match(text):
            check.context[match.group(1)] = typed(KINDS[match.group(2)], match.group(3))
        elif match := _TARGETING.match(text):
            check.context["targetingKey"] = match.group(1)
        elif match := _NESTED.match(text):
            check.context.setdefault(match.group(1), {})[match.group(2)] = match.group(3)
        elif match := re.match(r'the resolved details value should be "(.*)"$', text):
            check.value, check.expect_value = typed(check.kind, match.group(1)), True
        elif match := re.match(r'the reason should be "(.*)"$', text):
            check.reason = match.group(1)
        elif match := re.match(r'the error-code should be "(.*)"$', text):
            check.error_code = match.group(1)
        elif text == "the resolved metadata is empty":
            check.metadata = {}
        elif text == "the resolved metadata should contain":
            header, *rows = table
            assert header == ["key", "metadata_type", "value"], header
            check.metadata = {key: typed(KINDS[kind], value) for key, kind, value in rows}
        elif not text.startswith("the flag was evaluated"):
            raise AssertionError(f"step not understood: {text}")
    assert check is not None, case.id
    return check


def evaluator_cases(generation: str = "v2") -> list[Case]:
    """The evaluator suite's cases for one fractional generation (v1 is always left out)."""
    other = {"v2": "@fractional-v3", "v3": "@fractional-v2"}[generation]
    cases = []
    for path in sorted((FLAGD / "evaluator" / "gherkin").glob("*.feature")):
        cases += [
            c for c in read_feature(path) if "@fractional-v1" not in c.tags and other not in c.tags
        ]
    return cases
