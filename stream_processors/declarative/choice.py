"""Choice rules, compiled once into predicates over a state's input.

``compile_rule`` turns one rule of a Choice state's ``Choices`` into a ``ChoiceRule``, a
callable ``rule(doc) -> bool`` (a ``$$`` path reads the context object, passed as the second
argument). A rule is either a *data test*, a ``Variable`` path and exactly one comparison
operator, or a *boolean expression*, ``And``/``Or`` (a non-empty list of rules) or ``Not`` (one
rule), nested to any depth. Only a top-level rule has ``Next``.

The operators: ``String``, ``Numeric`` and ``Timestamp`` each with ``Equals``, ``LessThan``,
``GreaterThan``, ``LessThanEquals`` and ``GreaterThanEquals``; ``BooleanEquals``;
``StringMatches`` (``*`` matches any run of characters, ``\\*`` a star and ``\\\\`` a
backslash); each comparison's ``...Path`` variant, which compares with the value a second path
selects; and the type tests ``IsNull``, ``IsPresent``, ``IsNumeric``, ``IsString``,
``IsBoolean`` and ``IsTimestamp``, which take ``true`` or ``false``.

As the specification says, a comparison whose value is not of the operator's type is false
(``NumericEquals`` on a string is false, not an error); timestamps are RFC 3339 strings with an
upper-case ``T`` and a ``Z`` or numeric offset, and compare as instants. A ``Variable`` (or a
``...Path`` value) that selects nothing is a ``States.Runtime`` error, except for ``IsPresent``,
which is what tests for it. Mistakes in the rule itself (an unknown operator, two operators in
one data test, no ``Variable``, a literal of the wrong type, a bad timestamp literal, a bad
path) raise ``DefinitionError`` naming the state and the field when the rule is compiled.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stream_processors.declarative.dataflow import path_problem, select
from stream_processors.declarative.errors import NO_CHOICE_MATCHED, StatesError
from stream_processors.declarative.problems import DefinitionError
from stream_processors.declarative.values import JSON, compact, is_number

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def timestamp(value: object) -> datetime | None:
    """``value`` as an instant if it is an RFC 3339 timestamp string, else None."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # the shape is right but, say, the month is 13
        return None


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | int | None:
    return value if is_number(value) else None  # type: ignore[return-value]


def _boolean(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


#: How each operator family reads a value: the value to compare, or None when it is not of
#: the family's type (the comparison is then false).
_KINDS: dict[str, Callable[[object], Any]] = {
    "String": _string,
    "Numeric": _number,
    "Timestamp": timestamp,
    "Boolean": _boolean,
}
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "GreaterThan": operator.gt,
    "LessThanEquals": operator.le,
    "GreaterThanEquals": operator.ge,
}
#: Every comparison operator (without its ``Path`` suffix) -> (family, comparison).
COMPARISONS: dict[str, tuple[str, str]] = {
    f"{kind}{name}": (kind, name)
    for kind in ("String", "Numeric", "Timestamp")
    for name in _COMPARISONS
}
COMPARISONS["BooleanEquals"] = ("Boolean", "Equals")
#: The type tests and what each asks of a value.
TYPE_TESTS: dict[str, Callable[[JSON], bool]] = {
    "IsNull": lambda value: value is None,
    "IsNumeric": is_number,
    "IsString": lambda value: isinstance(value, str),
    "IsBoolean": lambda value: isinstance(value, bool),
    "IsTimestamp": lambda value: timestamp(value) is not None,
}
OPERATORS = frozenset(
    {*COMPARISONS, *(f"{name}Path" for name in COMPARISONS), *TYPE_TESTS}
    | {"IsPresent", "StringMatches"}
)
_BOOLEAN = ("And", "Or", "Not")


class ChoiceRule:
    """A compiled rule: ``rule(doc, context=None) -> bool``."""

    def __init__(self, test: Callable[[JSON, JSON], bool], text: str) -> None:
        self._test = test
        self.text = text

    def __call__(self, doc: JSON, context: JSON = None) -> bool:
        return self._test(doc, context)

    def __repr__(self) -> str:
        return f"ChoiceRule({self.text})"


def wildcard(pattern: str) -> re.Pattern[str]:
    r"""``StringMatches``'s pattern as a regular expression: ``*`` any run, ``\*`` a star."""
    pieces = re.split(r"(\\\\|\\\*|\*)", pattern)
    regex = "".join(
        ".*" if p == "*" else re.escape(p[1:] if p in ("\\\\", "\\*") else p) for p in pieces
    )
    return re.compile(regex, re.DOTALL)


@dataclass(frozen=True)
class _Where:
    """The state and field a rule sits at, for errors."""

    state: str
    field: str

    def into(self, key: str | int) -> _Where:
        return _Where(
            self.state, f"{self.field}[{key}]" if isinstance(key, int) else f"{self.field}.{key}"
        )

    def error(self, message: str) -> DefinitionError:
        return DefinitionError(message, state=self.state, field=self.field)


def compile_rule(
    rule: Mapping[str, JSON], *, state: str, field: str = "Choices[0]", nested: bool = False
) -> ChoiceRule:
    """Compile one Choice rule; ``nested``: a rule inside ``And``/``Or``/``Not`` (no ``Next``)."""
    return _compile(rule, _Where(state, field), nested)


def _compile(rule: object, where: _Where, nested: bool) -> ChoiceRule:
    if not isinstance(rule, Mapping):
        raise where.error("a Choice rule must be an object")
    keys = set(rule) - {"Comment"}
    if nested and "Next" in keys:
        raise where.into("Next").error("a rule inside And, Or or Not has no Next")
    if not nested and "Next" not in keys:
        raise where.into("Next").error("a top-level Choice rule needs Next")
    keys.discard("Next")
    unknown = sorted(
        k for k in keys if k not in OPERATORS and k not in _BOOLEAN and k != "Variable"
    )
    if unknown:
        raise where.into(unknown[0]).error(f"{unknown[0]!r} is not a Choice rule operator")
    combinator = next((k for k in _BOOLEAN if k in keys), None)
    if combinator:
        others = sorted(keys - {combinator})
        if others:
            raise where.into(combinator).error(f"{combinator} must be alone, not with {others}")
        return _boolean_rule(combinator, rule[combinator], where.into(combinator))
    return _data_test(rule, keys, where)


def _boolean_rule(name: str, value: object, where: _Where) -> ChoiceRule:
    if name == "Not":
        inner = _compile(value, where, nested=True)
        return ChoiceRule(lambda doc, ctx: not inner(doc, ctx), f"Not({inner.text})")
    if not isinstance(value, list) or not value:
        raise where.error(f"{name} must be a non-empty list of rules")
    rules = [_compile(item, where.into(i), nested=True) for i, item in enumerate(value)]
    combine = all if name == "And" else any
    text = f"{name}({', '.join(r.text for r in rules)})"
    return ChoiceRule(lambda doc, ctx: combine(r(doc, ctx) for r in rules), text)


def _data_test(rule: Mapping[str, JSON], keys: set[str], where: _Where) -> ChoiceRule:
    operators = sorted(keys - {"Variable"})
    if not operators:
        raise where.error("a data-test rule needs one comparison operator")
    if len(operators) > 1:
        raise where.into(operators[1]).error(f"one operator per rule, found {', '.join(operators)}")
    (name,) = operators
    variable = rule.get("Variable")
    if not isinstance(variable, str):
        raise where.into("Variable").error(f"{name} needs a Variable path")
    problem = path_problem(variable)
    if problem:
        raise where.into("Variable").error(problem)
    literal = rule[name]
    test = _test(name, literal, where.into(name))
    text = f"{variable} {name} {compact(literal)}"
    if name == "IsPresent":
        return ChoiceRule(lambda doc, ctx: _present(doc, variable, ctx) == literal, text)
    return ChoiceRule(lambda doc, ctx: test(select(doc, variable, ctx), doc, ctx), text)


def _present(doc: JSON, path: str, context: JSON) -> bool:
    try:
        select(doc, path, context)
    except StatesError:
        return False
    return True


_Test = Callable[[JSON, JSON, JSON], bool]


def _present_value(value: JSON) -> bool:
    return True


def _test(name: str, literal: JSON, where: _Where) -> _Test:
    """The test of one operator: ``test(value, doc, context)``."""
    if name in TYPE_TESTS or name == "IsPresent":
        if not isinstance(literal, bool):
            raise where.error(f"{name} takes true or false, not {compact(literal)}")
        # IsPresent's test is on the path, not the value: _data_test runs it; here it only checks.
        is_type = TYPE_TESTS.get(name, _present_value)
        return lambda value, doc, ctx: is_type(value) == literal
    if name == "StringMatches":
        if not isinstance(literal, str):
            raise where.error(f"StringMatches takes a string pattern, not {compact(literal)}")
        pattern = wildcard(literal)
        return lambda value, doc, ctx: isinstance(value, str) and bool(pattern.fullmatch(value))
    if name.endswith("Path"):
        return _path_comparison(name[: -len("Path")], literal, where)
    kind, comparison = COMPARISONS[name]
    read, compare = _KINDS[kind], _COMPARISONS[comparison]
    expected = read(literal)
    if expected is None:
        raise where.error(f"{name} needs a {kind.lower()} literal, not {compact(literal)}")
    return lambda value, doc, ctx: (v := read(value)) is not None and compare(v, expected)


def _path_comparison(name: str, path: JSON, where: _Where) -> _Test:
    if not isinstance(path, str):
        raise where.error(f"{name}Path takes a path, not {compact(path)}")
    problem = path_problem(path)
    if problem:
        raise where.error(problem)
    kind, comparison = COMPARISONS[name]
    read, compare = _KINDS[kind], _COMPARISONS[comparison]

    def test(value: JSON, doc: JSON, context: JSON) -> bool:
        left, right = read(value), read(select(doc, path, context))
        return left is not None and right is not None and bool(compare(left, right))

    return test


def choose(
    rules: Sequence[tuple[ChoiceRule, str]], default: str | None, doc: JSON, context: JSON = None
) -> str:
    """The ``Next`` of the first rule that holds, else ``Default``, else States.NoChoiceMatched."""
    for rule, target in rules:
        if rule(doc, context):
            return target
    if default is None:
        raise StatesError(NO_CHOICE_MATCHED, f"no Choice rule matched {compact(doc)[:200]}")
    return default
