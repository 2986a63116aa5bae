"""Fuzzing the snapshot path: decode, limits, validate, compile, evaluate.

Every input, whatever its shape, is offered to a real Applier (the one path every source
uses) and must end one of two ways: refused with a reason and at least one error naming a
JSON path, the active snapshot untouched; or applied, and then every flag evaluates for a
few keys and attribute sets without an engine error. ``evaluate`` never raises: it turns an
error inside a flag's rules into ``control`` / label "exception", so that label is what a
crash looks like here, and a validated snapshot must never produce it. A refusal from the
compile step's catch-all
("could not compile") would mean validation let through something the compiler cannot
handle, so it counts as a failure here too.

Inputs: structured mutations of valid snapshots (tests.fader.rules.strategies: values replaced
with random JSON, keys deleted, containers emptied or wrapped), each sent as JSON or
msgpack; the same documents truncated or with a flipped byte; and raw bytes. Together
more than 10,000 inputs, derandomized so that CI runs the same ones every time. Detached
signature documents get the same treatment against a Verifier.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fader.rules import compile as rules_compile
from fader.rules.matchers import compile_matcher
from fader.rules.result import LABEL_EXCEPTION
from fader.snapshot.codec import JSON, MSGPACK
from hypothesis import given
from hypothesis import strategies as st

from sidecar.delivery import signing
from sidecar.delivery.apply import Applier, Outcome
from sidecar.delivery.signing import SignatureError, Verifier
from sidecar.delivery.store import Store
from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.fader.rules.strategies import snapshots
from tests.fuzz.fuzzing import fuzz_settings

MUTATED_INPUTS = 5000
RAW_INPUTS = 3000
DAMAGED_INPUTS = 2500
CORPUS_SIZE = 40
KEYS = ("user-1", "", "a" * 300, "ü")
ATTRIBUTES: tuple[dict[str, Any] | None, ...] = (
    None,
    {"plan": "pro", "age": 30, "tags": ["a", "b"], "ok": True, "when": 1_700_000_000},
    {"plan": 1, "age": "thirty", "tags": "a", "ok": "TRUE", "when": -1.5},
)


@pytest.fixture(scope="module")
def corpus() -> list[dict[str, Any]]:
    """Valid snapshots to mutate, drawn once with a fixed seed."""
    found: list[dict[str, Any]] = []

    @fuzz_settings(CORPUS_SIZE)
    @given(snapshots())
    def collect(document: dict[str, Any]) -> None:
        found.append(document)

    collect()
    assert len(found) >= CORPUS_SIZE // 2
    return found


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["ARCHIVED", "ACTIVE", "WHITELIST", "IN_SEGMENT", "on", "off", "murmur"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key-or-index) in a decoded document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _slots(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield node, index
            yield from _slots(value)


def _mutate(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 3))):
        slots = list(_slots(mutated))
        if not slots:
            break
        container, key = data.draw(st.sampled_from(slots))
        operation = data.draw(st.sampled_from(("replace", "delete", "empty", "wrap", "copy")))
        if operation == "replace":
            container[key] = data.draw(json_values)
        elif operation == "delete":
            del container[key]
        elif operation == "empty":
            container[key] = (
                type(container[key])() if isinstance(container[key], dict | list) else ""
            )
        elif operation == "wrap":
            container[key] = [container[key]]
        else:  # the value of another slot, e.g. a flag name where a number belongs
            other, other_key = data.draw(st.sampled_from(slots))
            container[key] = copy.deepcopy(other[other_key])
    return mutated


def _encode(document: Any, fmt: str) -> bytes:
    if fmt == JSON:
        return json.dumps(document).encode()
    packed: bytes = msgpack.packb(document, use_bin_type=True)
    return packed


def _offer(data: bytes, fmt: str) -> Outcome:
    """Apply over a served snapshot; check the outcome is a clean refusal or a usable one."""
    store = Store()
    applier = Applier(store)
    outcome = applier.apply_bytes(data, fmt, "fuzz")
    if not outcome.applied:
        assert outcome.reason in ("invalid", "too_large", "too_many_flags")
        assert outcome.errors, outcome
        text = "; ".join(str(issue) for issue in outcome.errors)
        assert "could not compile" not in text, text
        assert store.current is None
        return outcome
    snapshot = store.current
    assert snapshot is not None and snapshot.version == outcome.version
    for name in (*snapshot.flag_names(), "no-such-flag"):
        for key in KEYS:
            for attributes in ATTRIBUTES:
                result = snapshot.evaluate(key, name, None, attributes)
                assert isinstance(result.treatment, str)
                assert result.label != LABEL_EXCEPTION, (
                    f"the engine raised evaluating {name!r} for {key!r}, {attributes!r}: {result}"
                )
    return outcome


def test_an_engine_crash_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: every matcher raises when it runs (compile_matcher wrapped so the
    snapshot still validates and compiles). evaluate answers control / "exception" instead
    of raising, and _offer must fail on that, not pass it as a string treatment."""

    def raising(raw: Any, ctx: Any) -> Any:
        compile_matcher(raw, ctx)

        def match(*args: Any) -> bool:
            raise RuntimeError("planted")

        return match

    monkeypatch.setattr(rules_compile, "compile_matcher", raising)
    whitelist = matcher("WHITELIST", whitelistMatcherData={"whitelist": ["user-1"]})
    document = snapshot_doc(flag("f", condition(whitelist)))
    with pytest.raises(AssertionError, match="the engine raised evaluating 'f'"):
        _offer(json.dumps(document).encode(), JSON)


def test_the_corpus_applies_and_never_answers_exception(corpus: list[dict[str, Any]]) -> None:
    """The valid snapshots the mutations start from, as they are: each applies, in JSON and
    msgpack, and answers every flag, key and attribute set without an engine error. Mutant
    this catches: a matcher that raises on an input it should refuse quietly (a numeric
    matcher's int() of a non-numeric string without its ValueError guard)."""
    for document in corpus:
        for fmt in (JSON, MSGPACK):
            assert _offer(_encode(document, fmt), fmt).reason == "applied"


def test_mutated_snapshots(corpus: list[dict[str, Any]]) -> None:
    seen: list[str] = []

    @fuzz_settings(MUTATED_INPUTS)
    @given(st.data(), st.sampled_from((JSON, MSGPACK)))
    def run(data: st.DataObject, fmt: str) -> None:
        document = data.draw(st.sampled_from(corpus))
        seen.append(_offer(_encode(_mutate(document, data), fmt), fmt).reason)

    run()
    assert len(seen) >= MUTATED_INPUTS
    # the mutations exercise both ends: some still valid, most refused
    assert seen.count("applied") > 100 and seen.count("invalid") > 1000


def test_damaged_encodings(corpus: list[dict[str, Any]]) -> None:
    seen: list[str] = []

    @fuzz_settings(DAMAGED_INPUTS)
    @given(st.data(), st.sampled_from((JSON, MSGPACK)))
    def run(data: st.DataObject, fmt: str) -> None:
        encoded = bytearray(_encode(data.draw(st.sampled_from(corpus)), fmt))
        position = data.draw(st.integers(0, len(encoded) - 1))
        if data.draw(st.booleans()):
            del encoded[position:]
        else:
            encoded[position] ^= 1 << data.draw(st.integers(0, 7))
        seen.append(_offer(bytes(encoded), fmt).reason)

    run()
    assert len(seen) >= DAMAGED_INPUTS


def test_raw_bytes() -> None:
    seen: list[str] = []

    @fuzz_settings(RAW_INPUTS)
    @given(st.binary(max_size=512), st.sampled_from((JSON, MSGPACK)))
    def run(data: bytes, fmt: str) -> None:
        seen.append(_offer(data, fmt).reason)

    run()
    assert len(seen) >= RAW_INPUTS


SIGNATURE_INPUTS = 1000


def test_signature_documents() -> None:
    """Mutated and random signature documents: each is refused with a signing reason, and
    only the untouched document verifies."""
    key = Ed25519PrivateKey.generate()
    verifier = Verifier({"k1": key.public_key()})
    data = b'{"version": 3, "flags": []}'
    genuine = json.loads(signing.sign(data, 3, key, "k1", 2**40).to_bytes())
    reasons: list[str] = []

    @fuzz_settings(SIGNATURE_INPUTS)
    @given(st.data())
    def run(draw: st.DataObject) -> None:
        if draw.draw(st.booleans()):
            raw = draw.draw(st.binary(max_size=600))
        else:
            document = dict(genuine)
            field = draw.draw(st.sampled_from(sorted(document)))
            document[field] = draw.draw(json_values)
            raw = json.dumps(document).encode()
        try:
            verifier.verify(data, raw)
        except SignatureError as err:
            assert err.reason in signing.REASONS and str(err)
            reasons.append(err.reason)
            return
        assert json.loads(raw) == genuine  # a mutation that changed nothing
        reasons.append("verified")

    run()
    assert len(reasons) >= SIGNATURE_INPUTS and "bad_signature_document" in reasons
