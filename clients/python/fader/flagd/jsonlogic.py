"""JsonLogic compiled to Python closures, once per snapshot, with bounds on size and depth.

A flagd flag's ``targeting`` is a JsonLogic expression. Interpreting the JSON tree on every
request would walk dicts and dispatch on operator names each time; instead each node
becomes a closure ``fn(data) -> value`` when the snapshot loads, literals are folded and
constant ``sem_ver`` versions are parsed once. A request then runs only the closures.

Every operator has a general closure. The shapes rules are nearly always written in also
have a specialised one (``SPECIALISED``), fewer calls for the same answer: ``var`` of a
constant path read directly, ``==`` and ``in`` against literals with the ``var`` read
inlined, ``cat`` of a literal and a ``var``, ``if`` choosing between literals (a *choice*:
``Node.index`` tells which of ``Node.choices`` the rule answers, so the flag's answers can
be matched to its variants once, when compiling). ``Compiler(specialise=False)`` compiles
with the general closures only, which is how the tests check each specialisation against
them.

Semantics are JsonLogic's (jsonlogic.com, as its JavaScript implementation defines it, with
JavaScript's coercions from ``fader.flagd.values``) plus flagd's operators
(``fader.flagd.operators``).

Two kinds of problems are found while compiling:

- ``TooComplex``: the expression is deeper than ``max_depth`` or has more than
  ``max_nodes`` nodes. The snapshot is refused: a snapshot must not be able to make
  evaluation slow.
- ``Unevaluable``: an unknown operator, or a ``$ref`` to an evaluator that does not exist.
  flagd accepts such a file and fails the flag at evaluation with PARSE_ERROR; Fader does
  the same (with a warning at load), so a flagd file behaves as it did under flagd.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fader.flagd.values import (
    less_or_equal,
    less_than,
    loose_equal,
    strict_equal,
    to_number,
    to_string,
    truthy,
)

Data = Any
Fn = Callable[[Data], Any]
REF: Final = "$ref"
FLAGD: Final = "$flagd"
TARGETING_KEY: Final = "targetingKey"

DEFAULT_MAX_DEPTH: Final = 32
DEFAULT_MAX_NODES: Final = 10_000


class TargetingProblem(Exception):
    """A problem at ``path`` (a JSON path inside the flag)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class TooComplex(TargetingProblem):
    """Over a limit: the snapshot is refused."""


class Unevaluable(TargetingProblem):
    """flagd would fail this flag at evaluation with PARSE_ERROR; so does Fader."""


@dataclass(frozen=True, slots=True)
class Node:
    """A compiled expression: ``fn``, or for a literal its ``value`` (``constant``).

    The other fields describe the expression's shape, for the specialised closures of the
    operators around it: ``boolean``, it always answers True or False (no truthiness test
    needed); ``text``, it always answers a string; ``path``, it is a ``var`` of that
    constant path with no default; ``choices`` and ``index``, it always answers one of a
    few literals: ``fn(data) == choices[index(data)]``.
    """

    fn: Fn
    constant: bool = False
    value: Any = None
    boolean: bool = False
    text: bool = False
    path: tuple[str, ...] | None = None
    choices: tuple[Any, ...] | None = None
    index: Callable[[Data], int] | None = None


def choice(choices: tuple[Any, ...], index: Callable[[Data], int]) -> Node:
    """A node answering ``choices[index(data)]``."""
    return Node(lambda data: choices[index(data)], choices=choices, index=index)


def literal(value: Any) -> Node:
    return Node(lambda data: value, True, value)


# A custom operator: compiled argument nodes -> a node (flagd's fractional, sem_ver...).
Operator = Callable[["Compiler", list[Node], str], Node]


class Compiler:
    """Compiles one flag's targeting; ``operators`` adds flagd's to JsonLogic's own."""

    def __init__(
        self,
        flag_key: str,
        evaluators: Mapping[str, Any],
        operators: Mapping[str, Operator],
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_nodes: int = DEFAULT_MAX_NODES,
        specialise: bool = True,
    ) -> None:
        self.flag_key = flag_key
        self.specialise = specialise
        self.evaluators = evaluators
        self.operators = operators
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.nodes = 0
        self.uses_whole_data = False  # a var whose path is computed, or "" (all the data)
        self.reads_time = False  # the answer may change with time alone ($flagd.timestamp)
        self.reads_key = False  # the rule reads targetingKey (the data must carry it)

    def compile(self, node: Any, path: str, depth: int = 0, in_ref: bool = False) -> Node:
        if depth > self.max_depth:
            raise TooComplex(path, f"targeting is nested deeper than {self.max_depth} levels")
        if not isinstance(node, list) and (not isinstance(node, dict) or len(node) != 1):
            return literal(node)  # scalars, and objects that are data (not one key): free
        self.nodes += 1  # operators and arrays count; literal values inside them do not
        if self.nodes > self.max_nodes:
            raise TooComplex(path, f"targeting has more than {self.max_nodes} nodes")
        if isinstance(node, list):
            return self._array(node, path, depth, in_ref)
        ((name, raw_args),) = node.items()
        if name == REF:
            return self._ref(raw_args, path, depth, in_ref)
        if name == "var":
            return self._var(raw_args, path, depth, in_ref)
        builder = BUILDERS.get(name)
        custom = self.operators.get(name)
        if builder is None and custom is None:
            raise Unevaluable(path, f"unknown operator {name!r}")
        args = raw_args if isinstance(raw_args, list) else [raw_args]
        nodes = [
            self.compile(arg, f"{path}.{name}[{i}]", depth + 1, in_ref)
            for i, arg in enumerate(args)
        ]
        if custom is not None:
            return custom(self, nodes, f"{path}.{name}")
        if name in ("missing", "missing_some"):
            self.reads_key = True  # it may name any key, targetingKey included
        special = SPECIALISED.get(name) if self.specialise else None
        shaped = special(nodes) if special is not None else None
        if shaped is not None:
            return shaped
        assert builder is not None
        return builder(nodes)

    def _array(self, items: list[Any], path: str, depth: int, in_ref: bool) -> Node:
        """An array evaluates every element; an array of literals is itself a literal."""
        nodes = [
            self.compile(item, f"{path}[{i}]", depth + 1, in_ref) for i, item in enumerate(items)
        ]
        if all(n.constant for n in nodes):
            return literal([n.value for n in nodes])
        fns = [n.fn for n in nodes]
        return Node(lambda data: [fn(data) for fn in fns])

    def _ref(self, name: Any, path: str, depth: int, in_ref: bool) -> Node:
        """``{"$ref": name}``: the named ``$evaluators`` entry, substituted (one level only,
        as flagd substitutes refs once: a ref inside an evaluator stays unresolved)."""
        if in_ref or not isinstance(name, str) or name not in self.evaluators:
            raise Unevaluable(path, f"$ref to an evaluator that does not exist: {name!r}")
        return self.compile(self.evaluators[name], f"$evaluators.{name}", depth + 1, True)

    def _var(self, raw: Any, path: str, depth: int, in_ref: bool) -> Node:
        args = raw if isinstance(raw, list) else [raw]
        nodes = [self.compile(a, f"{path}.var[{i}]", depth + 1, in_ref) for i, a in enumerate(args)]
        default = nodes[1] if len(nodes) > 1 else literal(None)
        if not nodes or (nodes[0].constant and nodes[0].value in ("", None)):
            self.uses_whole_data = self.reads_key = True
            return Node(lambda data: data)
        if nodes[0].constant:
            parts = _path(nodes[0].value)
            if parts[0] == FLAGD:
                return self._flagd_property(parts, default)
            if parts[0] == TARGETING_KEY:
                self.reads_key = True
            return var(parts, default) if self.specialise else general_var(parts, default)
        self.uses_whole_data = self.reads_key = True
        path_fn, default_fn = nodes[0].fn, default.fn

        def dynamic_var(data: Data) -> Any:
            found = lookup(data, _path(path_fn(data)))
            return default_fn(data) if found is None else found

        return Node(dynamic_var)

    def _flagd_property(self, parts: tuple[str, ...], default: Node) -> Node:
        """``$flagd.flagKey`` is known when compiling; ``$flagd.timestamp`` is read per call
        (Unix seconds), as flagd injects both into every evaluation's data."""
        flag_key = self.flag_key
        if parts == (FLAGD, "flagKey"):
            return literal(flag_key)
        if parts == (FLAGD, "timestamp"):
            self.reads_time = True
            return Node(lambda data: int(time.time()))
        if parts == (FLAGD,):
            self.reads_time = True
            return Node(lambda data: {"flagKey": flag_key, "timestamp": int(time.time())})
        return default


def _path(value: Any) -> tuple[str, ...]:
    text = to_string(value)
    return tuple(text.split(".")) if text else ()


_MISSING = object()


def lookup(data: Data, parts: tuple[str, ...]) -> Any:
    """The value at a dotted path: object keys, or list indexes; None when absent."""
    for part in parts:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
        if data is None:
            return None
    return data


def reader(parts: tuple[str, ...]) -> Fn:
    """``lookup(data, parts)`` for a constant path, reading one or two object keys directly
    (the usual paths: ``email``, ``user.name``) and falling back to ``lookup`` otherwise."""
    if len(parts) == 1:
        (name,) = parts
        return lambda data: data.get(name) if isinstance(data, dict) else lookup(data, parts)
    if len(parts) == 2:
        outer, inner = parts

        def two(data: Data) -> Any:
            if isinstance(data, dict):
                found = data.get(outer)
                if isinstance(found, dict):
                    return found.get(inner)
            return lookup(data, parts)

        return two
    return lambda data: lookup(data, parts)


def var(parts: tuple[str, ...], default: Node) -> Node:
    """``var`` with a constant path; without a default it is the path's reader itself."""
    read = reader(parts)
    if default.constant and default.value is None:
        return Node(read, path=parts)
    default_fn = default.fn

    def with_default(data: Data) -> Any:
        found = read(data)
        return default_fn(data) if found is None else found

    return Node(with_default)


def general_var(parts: tuple[str, ...], default: Node) -> Node:
    default_fn = default.fn

    def general(data: Data) -> Any:
        found = lookup(data, parts)
        return default_fn(data) if found is None else found

    return Node(general)


# --- lazy operators: their arguments are evaluated only as needed -----------------------------


def _if(nodes: list[Node]) -> Node:
    """``if`` / ``?:``: [cond, then, cond, then, ..., else]."""
    if not nodes:
        return literal(None)
    if len(nodes) == 1:
        return nodes[0]
    pairs = [(nodes[i].fn, nodes[i + 1].fn) for i in range(0, len(nodes) - 1, 2)]
    otherwise = nodes[-1].fn if len(nodes) % 2 else None

    def chain(data: Data) -> Any:
        for cond, then in pairs:
            if truthy(cond(data)):
                return then(data)
        return otherwise(data) if otherwise is not None else None

    return Node(chain)


def _test(cond: Node) -> Callable[[Data], bool]:
    """A condition as a test answering True or False."""
    if cond.boolean:
        return cond.fn
    fn = cond.fn
    return lambda data: truthy(fn(data))


def _special_if(nodes: list[Node]) -> Node | None:
    """``if`` with literal branches is a choice (the usual rule: a condition, then variant
    names); ``if cond then A else B`` otherwise skips the truthiness test of a boolean
    condition."""
    if len(nodes) < 2:
        return None
    branches = [nodes[i] for i in range(1, len(nodes), 2)]
    otherwise = nodes[-1] if len(nodes) % 2 else literal(None)
    tests = [_test(nodes[i]) for i in range(0, len(nodes) - 1, 2)]
    if all(n.constant for n in branches) and otherwise.constant:
        if len(tests) == 1:  # a test answers True or False: index 1 or 0
            return choice((otherwise.value, branches[0].value), tests[0])
        numbered = list(enumerate(tests))
        last = len(tests)

        def first_true(data: Data) -> int:
            for i, test in numbered:
                if test(data):
                    return i
            return last

        return choice((*(n.value for n in branches), otherwise.value), first_true)
    if len(tests) == 1:
        (test,) = tests
        then_fn, other_fn = branches[0].fn, otherwise.fn
        return Node(lambda data: then_fn(data) if test(data) else other_fn(data))
    return None


def _and(nodes: list[Node]) -> Node:
    fns = [n.fn for n in nodes]

    def all_true(data: Data) -> Any:
        value = None
        for fn in fns:
            value = fn(data)
            if not truthy(value):
                return value
        return value

    return Node(all_true)


def _or(nodes: list[Node]) -> Node:
    fns = [n.fn for n in nodes]

    def any_true(data: Data) -> Any:
        value = None
        for fn in fns:
            value = fn(data)
            if truthy(value):
                return value
        return value

    return Node(any_true)


_LAZY: dict[str, Callable[[list[Node]], Node]] = {"if": _if, "?:": _if, "and": _and, "or": _or}


# --- scoped operators: the second argument runs on each element of the first ------------------


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _scoped(combine: Callable[[list[Any], Fn], Any]) -> Callable[[list[Node]], Node]:
    def build(nodes: list[Node]) -> Node:
        if len(nodes) < 2:
            return literal(None)
        source, logic = nodes[0].fn, nodes[1].fn
        return Node(lambda data: combine(_items(source(data)), logic))

    return build


def _all(items: list[Any], logic: Fn) -> bool:
    return bool(items) and all(truthy(logic(item)) for item in items)


def _reduce(nodes: list[Node]) -> Node:
    if len(nodes) < 2:
        return literal(None)
    source, logic = nodes[0].fn, nodes[1].fn
    initial = nodes[2].fn if len(nodes) > 2 else (lambda data: None)

    def reduce(data: Data) -> Any:
        accumulator = initial(data)
        for item in _items(source(data)):
            accumulator = logic({"current": item, "accumulator": accumulator})
        return accumulator

    return Node(reduce)


_SCOPED: dict[str, Callable[[list[Node]], Node]] = {
    "map": _scoped(lambda items, logic: [logic(item) for item in items]),
    "filter": _scoped(lambda items, logic: [item for item in items if truthy(logic(item))]),
    "all": _scoped(_all),
    "some": _scoped(lambda items, logic: any(truthy(logic(item)) for item in items)),
    "none": _scoped(lambda items, logic: not any(truthy(logic(item)) for item in items)),
    "reduce": _reduce,
}


# --- eager operators: every argument evaluated, then the operation -----------------------------


def _eager(
    operation: Callable[[list[Any]], Any], boolean: bool = False
) -> Callable[[list[Node]], Node]:
    """Folded to a literal when every argument is; else evaluates the arguments first.
    `boolean`: the operation always answers True or False."""

    def build(nodes: list[Node]) -> Node:
        if all(n.constant for n in nodes):
            return literal(operation([n.value for n in nodes]))
        fns = [n.fn for n in nodes]
        if len(fns) == 2:
            first, second = fns
            return Node(lambda data: operation([first(data), second(data)]), boolean=boolean)
        return Node(lambda data: operation([fn(data) for fn in fns]), boolean=boolean)

    return build


def _arg(args: list[Any], index: int) -> Any:
    return args[index] if index < len(args) else None


def _compare(test: Callable[[Any, Any], bool]) -> Callable[[list[Any]], bool]:
    """``<``/``<=`` with JsonLogic's three-argument "between" form."""

    def compare(args: list[Any]) -> bool:
        if len(args) >= 3:
            return test(args[0], args[1]) and test(args[1], args[2])
        return test(_arg(args, 0), _arg(args, 1))

    return compare


def _in(args: list[Any]) -> bool:
    needle, haystack = _arg(args, 0), _arg(args, 1)
    if isinstance(haystack, str):
        return to_string(needle) in haystack
    if isinstance(haystack, list):
        return any(strict_equal(needle, item) for item in haystack)
    return False


def _top_name(node: Node) -> str | None:
    """The name a node reads when it is a ``var`` of one top-level name, without default."""
    return node.path[0] if node.path is not None and len(node.path) == 1 else None


def _special_in(nodes: list[Node]) -> Node | None:
    """``in`` against a literal list of strings is a set lookup, however long the list; a
    top-level ``var`` as the needle is read inline."""
    if len(nodes) != 2 or not nodes[1].constant or nodes[0].constant:
        return None
    haystack = nodes[1].value
    if not isinstance(haystack, list) or not all(isinstance(item, str) for item in haystack):
        return None
    members = frozenset(haystack)
    name, needle = _top_name(nodes[0]), nodes[0].fn
    if name is not None:
        parts = (name,)

        def member_of_name(data: Data) -> bool:
            value = data.get(name) if isinstance(data, dict) else lookup(data, parts)
            return type(value) is str and value in members

        return Node(member_of_name, boolean=True)

    def member(data: Data) -> bool:
        value = needle(data)
        return type(value) is str and value in members

    return Node(member, boolean=True)


def _sum(args: list[Any]) -> float | int:
    return sum((to_number(a) for a in args), 0)


def _product(args: list[Any]) -> float | int:
    result: float | int = 1
    for a in args:
        result *= to_number(a)
    return result


def _minus(args: list[Any]) -> float | int:
    if len(args) == 1:
        return -to_number(args[0])
    return to_number(_arg(args, 0)) - to_number(_arg(args, 1))


def _divide(args: list[Any]) -> float | int | None:
    divisor = to_number(_arg(args, 1))
    if divisor == 0 or divisor != divisor:
        return None
    return to_number(_arg(args, 0)) / divisor


def _modulo(args: list[Any]) -> float | int | None:
    divisor = to_number(_arg(args, 1))
    if divisor == 0 or divisor != divisor:
        return None
    dividend = to_number(_arg(args, 0))
    result = abs(dividend) % abs(divisor)  # JavaScript's % keeps the dividend's sign
    return -result if dividend < 0 else result


def _extreme(pick: Callable[..., Any]) -> Callable[[list[Any]], Any]:
    def extreme(args: list[Any]) -> Any:
        numbers = [to_number(a) for a in args]
        return pick(numbers) if numbers else None

    return extreme


def _substr(args: list[Any]) -> str:
    text = to_string(_arg(args, 0))
    start = int(to_number(_arg(args, 1)) or 0)
    if start < 0:
        start = max(0, len(text) + start)
    if len(args) < 3:
        return text[start:]
    length = int(to_number(args[2]) or 0)
    end = len(text) + length if length < 0 else start + length
    return text[start:end]


def _merge(args: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for a in args:
        if isinstance(a, list):
            merged.extend(a)
        else:
            merged.append(a)
    return merged


def _missing_keys(data: Data, keys: list[Any]) -> list[Any]:
    return [key for key in keys if lookup(data, _path(key)) in (None, "")]


def _special_equality(negate: bool) -> Callable[[list[Node]], Node | None]:
    """``==`` / ``!=`` against a literal string (the usual rule: an attribute equals a
    literal): a string compares directly, anything else by JavaScript's rules; a top-level
    ``var`` is read inline."""

    def build(nodes: list[Node]) -> Node | None:
        if len(nodes) != 2 or nodes[0].constant == nodes[1].constant:
            return None
        constant, other = (nodes[0], nodes[1]) if nodes[0].constant else (nodes[1], nodes[0])
        text, read, name = constant.value, other.fn, _top_name(other)
        if not isinstance(text, str):
            return None
        if name is not None:
            parts = (name,)

            def name_equal(data: Data) -> bool:
                value = data.get(name) if isinstance(data, dict) else lookup(data, parts)
                if type(value) is str:
                    return (value == text) != negate
                return loose_equal(value, text) != negate

            return Node(name_equal, boolean=True)

        def equal(data: Data) -> bool:
            value = read(data)
            if type(value) is str:
                return (value == text) != negate
            return loose_equal(value, text) != negate

        return Node(equal, boolean=True)

    return build


def _cat(args: list[Any]) -> str:
    return "".join([v if type(v) is str else to_string(v) for v in args])


def _build_cat(nodes: list[Node]) -> Node:
    node = _eager(_cat)(nodes)
    return node if node.constant else Node(node.fn, text=True)


def _special_cat(nodes: list[Node]) -> Node | None:
    """``cat`` of a literal and a ``var`` (a bucketing value such as ``flagKey + user.id``)."""
    if len(nodes) != 2 or not nodes[0].constant or nodes[1].path is None:
        return None
    prefix, read = to_string(nodes[0].value), nodes[1].fn

    def prefixed(data: Data) -> str:
        value = read(data)
        return prefix + (value if type(value) is str else to_string(value))

    return Node(prefixed, text=True)


_EAGER: dict[str, Callable[[list[Node]], Node]] = {
    "==": _eager(lambda a: loose_equal(_arg(a, 0), _arg(a, 1)), boolean=True),
    "!=": _eager(lambda a: not loose_equal(_arg(a, 0), _arg(a, 1)), boolean=True),
    "===": _eager(lambda a: strict_equal(_arg(a, 0), _arg(a, 1)), boolean=True),
    "!==": _eager(lambda a: not strict_equal(_arg(a, 0), _arg(a, 1)), boolean=True),
    "!": _eager(lambda a: not truthy(_arg(a, 0)), boolean=True),
    "!!": _eager(lambda a: truthy(_arg(a, 0)), boolean=True),
    ">": _eager(lambda a: less_than(_arg(a, 1), _arg(a, 0)), boolean=True),
    ">=": _eager(lambda a: less_or_equal(_arg(a, 1), _arg(a, 0)), boolean=True),
    "<": _eager(_compare(less_than), boolean=True),
    "<=": _eager(_compare(less_or_equal), boolean=True),
    "in": _eager(_in),
    "cat": _build_cat,
    "substr": _eager(_substr),
    "+": _eager(_sum),
    "*": _eager(_product),
    "-": _eager(_minus),
    "/": _eager(_divide),
    "%": _eager(_modulo),
    "max": _eager(_extreme(max)),
    "min": _eager(_extreme(min)),
    "merge": _eager(_merge),
    "log": _eager(lambda a: _arg(a, 0)),
}


def _missing(nodes: list[Node]) -> Node:
    """``missing``: the keys (a list, or the arguments) that are absent or empty in data."""
    keys = _eager(lambda a: a[0] if a and isinstance(a[0], list) else a)(nodes)
    keys_fn = keys.fn
    return Node(lambda data: _missing_keys(data, keys_fn(data)))


def _missing_some(nodes: list[Node]) -> Node:
    args = _eager(lambda a: a)(nodes)
    args_fn = args.fn

    def missing_some(data: Data) -> list[Any]:
        values = args_fn(data)
        need = to_number(_arg(values, 0))
        keys = _items(_arg(values, 1))
        missing = _missing_keys(data, keys)
        return [] if len(keys) - len(missing) >= need else missing

    return Node(missing_some)


# Every operator but ``var`` (compiled by ``Compiler._var``): compiled arguments -> a node.
BUILDERS: dict[str, Callable[[list[Node]], Node]] = {
    **_LAZY,
    **_SCOPED,
    **_EAGER,
    "missing": _missing,
    "missing_some": _missing_some,
}

# Specialised closures for common shapes: the same answers as ``BUILDERS``' in fewer calls;
# None when the arguments are not of the shape (the general closure is then used).
SPECIALISED: dict[str, Callable[[list[Node]], Node | None]] = {
    "if": _special_if,
    "?:": _special_if,
    "==": _special_equality(negate=False),
    "!=": _special_equality(negate=True),
    "in": _special_in,
    "cat": _special_cat,
}
