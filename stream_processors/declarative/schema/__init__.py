"""The JSON Schemas of declarative definitions, shipped in the package, and ``validate``.

Two schemas live beside this module: ``states_language.schema.json`` (the States Language as
Sagalog runs it: Step Functions' fields plus the seed's ``StartState``, ``WorkflowName``,
``Service``/``Action`` on a Task and ``Retry`` as one object) and ``state_machine.schema.json``
(the seed's ``initial_state``/``states`` dict). Both refuse unknown fields everywhere
(``additionalProperties: false``), so nothing in a definition is silently ignored; a field
Step Functions has but Sagalog does not run is reported as *not supported*.

``validate(doc, lines)`` picks the schema by the document's shape, checks it with the
``jsonschema`` library and returns one ``Problem`` per finding, each naming the state, the field
and the line. Where a schema rule carries Sagalog's ``x-message`` (and ``x-field``), that text
replaces the validator's generic one ("is not valid under any of the given schemas"). These are
shape checks only: the compiler's own checks (that ``Next`` names a state, that a path parses,
that a Choice rule has one operator) come after.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from stream_processors.declarative.problems import LineMap, NodePath, Problem, line_of, locate
from stream_processors.declarative.values import JSON

Dialect = Literal["states-language", "state-machine"]

SCHEMA_FILES: dict[Dialect, str] = {
    "states-language": "states_language.schema.json",
    "state-machine": "state_machine.schema.json",
}

#: Fields of Step Functions' States Language that Sagalog recognises but does not run.
UNSUPPORTED = frozenset(
    {
        "Arguments",
        "Output",
        "Assign",
        "Credentials",
        "ItemReader",
        "ResultWriter",
        "ItemBatcher",
        "ToleratedFailureCountPath",
        "ToleratedFailurePercentagePath",
        "MaxConcurrencyPath",
        "Condition",
        "Items",
    }
)


_REQUIRED = re.compile(r"'(.+)' is a required property")


@cache
def schema(dialect: Dialect) -> dict[str, Any]:
    """The JSON Schema of ``dialect``, read from the package."""
    text = resources.files(__name__).joinpath(SCHEMA_FILES[dialect]).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(dialect: Dialect) -> Draft202012Validator:
    return Draft202012Validator(schema(dialect))


def dialect_of(doc: Mapping[str, JSON]) -> Dialect | None:
    """Which language ``doc`` is written in, by its top-level keys (None: neither)."""
    if {"States", "StartAt", "StartState"} & doc.keys():
        return "states-language"
    if {"states", "initial_state"} & doc.keys():
        return "state-machine"
    return None


def validate(doc: Mapping[str, JSON], lines: LineMap | None = None) -> list[Problem]:
    """Every schema problem in ``doc``, in the order of the lines they are on."""
    lines = lines or {}
    dialect = dialect_of(doc)
    if dialect is None:
        message = "neither a States Language definition (no States) nor a state-machine dict"
        return [Problem(None, None, 1 if lines else None, message + " (no states)")]
    problems = {
        problem: None
        for error in _validator(dialect).iter_errors(doc)
        for problem in _problems(error, lines)
    }
    return sorted(problems, key=lambda p: (p.line or 0, p.state or "", p.field or ""))


def _problem(path: NodePath, message: str, lines: LineMap) -> Problem:
    state, field = locate(path)
    return Problem(state, field, line_of(lines, path), message)


def _problems(error: ValidationError, lines: LineMap) -> Iterator[Problem]:
    path: NodePath = tuple(error.absolute_path)
    rule = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties":
        yield from _unknown_fields(error, rule, path, lines)
    elif error.validator in ("if", "allOf", "then"):
        return  # the failing branch reports its own errors
    elif error.validator == "required" and (missing := _REQUIRED.fullmatch(str(error.message))):
        yield _problem((*path, missing.group(1)), "is required", lines)
    elif "x-message" in rule and error.validator in ("oneOf", "anyOf", "not"):
        field = rule.get("x-field")
        yield _problem((*path, field) if field else path, rule["x-message"], lines)
    else:
        yield _problem(path, _plain(error), lines)


def _unknown_fields(
    error: ValidationError, rule: Mapping[str, Any], path: NodePath, lines: LineMap
) -> Iterator[Problem]:
    known = rule.get("properties", {})
    kind = str(rule.get("x-type", "this object"))
    where = kind if kind == "this object" else ("an " if kind[0] in "aeiou" else "a ") + kind
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    for key in instance:
        if key in known:
            continue
        if key in UNSUPPORTED:
            yield _problem((*path, key), f"{key} is not supported by Sagalog", lines)
        else:
            yield _problem((*path, key), f"{key!r} is not a field of {where}", lines)


def _plain(error: ValidationError) -> str:
    """The validator's message, without echoing a whole object back."""
    message = str(error.message)
    return message if len(message) <= 160 else message[:160] + "..."
