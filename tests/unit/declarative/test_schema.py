"""``stream_processors.declarative.schema``: the shipped JSON Schemas accept the seeds and a
definition with every state type, and report each problem with its state, field and line,
unknown and unsupported fields included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from stream_processors.declarative.loader import load, loads
from stream_processors.declarative.problems import Problem
from stream_processors.declarative.schema import dialect_of, schema, validate

DEFINITIONS = Path(__file__).parent / "definitions"
TIMESTAMP = schema("states-language")["$defs"]["Timestamp"]["pattern"]
RESULT_PATH = schema("states-language")["$defs"]["ResultPath"]["pattern"]


@pytest.mark.parametrize("dialect", ["states-language", "state-machine"])
def test_the_shipped_schemas_are_valid_json_schemas(dialect: str) -> None:
    Draft202012Validator.check_schema(schema(dialect))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "dialect"),
    [
        ("seed_001_user_onboarding.json", "states-language"),
        ("seed_000_state_machine.json", "state-machine"),
        ("every_state.yaml", "states-language"),
    ],
)
def test_valid_definitions_have_no_problems(name: str, dialect: str) -> None:
    loaded = load(DEFINITIONS / name)
    assert dialect_of(loaded.doc) == dialect
    assert validate(loaded.doc, loaded.lines) == []


def problems(text: str) -> list[tuple[str | None, str | None, int | None, str]]:
    loaded = loads(text, source="d.yaml")
    return [(p.state, p.field, p.line, p.message) for p in validate(loaded.doc, loaded.lines)]


HEAD = "StartAt: A\nStates:\n  A:\n"  # state A is on line 3, its fields start on line 4


def S(*lines: str) -> str:
    """A state's fields, one a line, indented under ``A:``."""
    return "".join(f"    {line}\n" for line in lines)


@pytest.mark.parametrize(
    ("state_text", "expected"),
    [
        (
            S("Type: Pass", "End: true", "Resutl: 1"),
            ("A", "Resutl", 6, "'Resutl' is not a field of a Pass state"),
        ),
        (
            S("Type: Task", "Resource: r", "End: true", "Credentials: {}"),
            ("A", "Credentials", 7, "Credentials is not supported by Sagalog"),
        ),
        (
            S("Type: Task", "Resource: r", "Next: B", "End: true"),
            ("A", "Next", 6, "needs exactly one of Next and End"),
        ),
        (
            S("Type: Task", "Resource: r"),
            ("A", "Next", 3, "needs exactly one of Next and End"),
        ),
        (
            S("Type: Task", "Service: S", "End: true"),
            (
                "A",
                "Resource",
                3,
                "names its worker by Resource, or by Service and Action (one way, not both)",
            ),
        ),
        (S("Type: Task", "Resource: r", "End: false"), ("A", "End", 6, "True was expected")),
        (
            S("Type: Task", "Resource: r", "End: true", "TimeoutSeconds: 0"),
            ("A", "TimeoutSeconds", 7, "0 is less than the minimum of 1"),
        ),
        (
            S("Type: Task", "Resource: r", "End: true", "InputPath: order"),
            ("A", "InputPath", 7, "'order' does not match '^\\\\$'"),
        ),
        (
            S("Type: Task", "Resource: r", "End: true", "Retry:", "  - MaxAttempts: 1"),
            ("A", "Retry[0].ErrorEquals", 8, "is required"),
        ),
        (
            S("Type: Task", "Resource: r", "End: true", "Retry: {BackoffRate: 0.5}"),
            ("A", "Retry.BackoffRate", 7, "0.5 is less than the minimum of 1"),
        ),
        (
            S("Type: Task", "Resource: r", "End: true", "Catch:", "  - ErrorEquals: [E]"),
            ("A", "Catch[0].Next", 8, "is required"),
        ),
        (
            S("Type: Wait", "End: true"),
            (
                "A",
                "Seconds",
                3,
                "needs exactly one of Seconds, SecondsPath, Timestamp and TimestampPath",
            ),
        ),
        (
            S("Type: Wait", "End: true", "Timestamp: 2016-03-14"),
            (
                "A",
                "Timestamp",
                6,
                f"'2016-03-14' does not match {TIMESTAMP!r}",
            ),
        ),
        (
            S("Type: Pass", "End: true", "ResultPath: $$.Execution"),
            ("A", "ResultPath", 6, f"'$$.Execution' does not match {RESULT_PATH!r}"),
        ),
        (S("Type: Choice", "Choices: []"), ("A", "Choices", 5, "[] should be non-empty")),
        (
            S(
                "Type: Choice",
                "Choices:",
                "  - Variable: $.x",
                "    NumericEquals: one",
                "    Next: B",
            ),
            ("A", "Choices[0].NumericEquals", 7, "'one' is not of type 'number'"),
        ),
        (
            S(
                "Type: Choice",
                "Choices:",
                "  - Not: {Variable: $.x, IsNull: true, Next: B}",
                "    Next: B",
            ),
            ("A", "Choices[0].Not.Next", 6, "a rule inside And, Or or Not has no Next"),
        ),
        (
            S("Type: Choice", "Choices:", "  - Variable: $.x", "    StringEqual: a", "    Next: B"),
            ("A", "Choices[0].StringEqual", 7, "'StringEqual' is not a field of a Choice rule"),
        ),
        (
            S("Type: Choice", "Choices:", "  - Condition: '{% true %}'", "    Next: B"),
            ("A", "Choices[0].Condition", 6, "Condition is not supported by Sagalog"),
        ),
        (
            S("Type: Fail", "Error: E", "ErrorPath: $.e"),
            ("A", "Error", 5, "takes Error or ErrorPath (and Cause or CausePath), not both"),
        ),
        (
            S("Type: Succeed", "Next: B"),
            ("A", "Next", 5, "'Next' is not a field of a Succeed state"),
        ),
        (
            S("Type: Parallel", "End: true", "Branches:", "  - StartAt: B"),
            ("A", "Branches[0].States", 7, "is required"),
        ),
        (
            S("Type: Map", "End: true"),
            ("A", "ItemProcessor", 3, "needs exactly one of ItemProcessor and Iterator"),
        ),
        (
            S(
                "Type: Map",
                "End: true",
                "ItemProcessor: {StartAt: B, States: {B: {Type: Succeed}}}",
                "ItemReader: {}",
            ),
            ("A", "ItemReader", 7, "ItemReader is not supported by Sagalog"),
        ),
        (
            S(
                "Type: Map",
                "End: true",
                "ItemProcessor:",
                "  ProcessorConfig: {Mode: DISTRIBUTED}",
                "  StartAt: B",
                "  States: {B: {Type: Succeed}}",
            ),
            ("A", "ItemProcessor.ProcessorConfig.Mode", 7, "'INLINE' was expected"),
        ),
        (
            S("Type: Taks"),
            (
                "A",
                "Type",
                4,
                "'Taks' is not one of "
                "['Task', 'Choice', 'Parallel', 'Map', 'Wait', 'Pass', 'Succeed', 'Fail']",
            ),
        ),
    ],
)
def test_each_problem_names_state_field_and_line(
    state_text: str, expected: tuple[str | None, str | None, int | None, str]
) -> None:
    assert problems(HEAD + state_text) == [expected]


def test_a_nested_states_problem_names_the_inner_state() -> None:
    text = HEAD + (
        "    Type: Parallel\n    End: true\n    Branches:\n"
        "      - StartAt: B\n        States:\n          B:\n            Type: Pass\n"
        "            End: true\n            Bogus: 1\n"
    )
    assert problems(text) == [("B", "Bogus", 12, "'Bogus' is not a field of a Pass state")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "States: {A: {Type: Succeed}}\n",
            [(None, "StartAt", 1, "needs exactly one of StartAt and StartState")],
        ),
        (
            "StartAt: A\nStartState: A\nStates: {A: {Type: Succeed}}\n",
            [(None, "StartAt", 1, "needs exactly one of StartAt and StartState")],
        ),
        (
            "StartAt: A\nStates: {A: {Type: Succeed}}\nName: x\n",
            [(None, "Name", 3, "'Name' is not a field of a States Language definition")],
        ),
        ("StartAt: A\n", [(None, "States", 1, "is required")]),
        (
            "flow: 1\n",
            [
                (
                    None,
                    None,
                    1,
                    "neither a States Language definition (no States) "
                    "nor a state-machine dict (no states)",
                )
            ],
        ),
    ],
)
def test_top_level_problems(
    text: str, expected: list[tuple[str | None, str | None, int | None, str]]
) -> None:
    assert problems(text) == expected


@pytest.mark.parametrize(
    ("state_text", "expected"),
    [
        ("{type: finale}", ("A", "type", 3, "'final' was expected")),
        ("{}", ("A", None, 3, "a state needs one of task, action, on_event or type: final")),
        ("{task: t}", ("A", "on_success", 3, "is required")),
        (
            "{task: t, on_success: B, retry: 2}",
            ("A", "retry", 3, "'retry' is not a field of a task state"),
        ),
        (
            "{action: a, on_complete: B, on_failure: C}",
            ("A", "on_failure", 3, "'on_failure' is not a field of an action state"),
        ),
        ("{on_event: {}}", ("A", "on_event", 3, "{} should be non-empty")),
        ("{on_event: {go: 3}}", ("A", "on_event.go", 3, "3 is not of type 'string'")),
    ],
)
def test_state_machine_dict_problems(
    state_text: str, expected: tuple[str | None, str | None, int | None, str]
) -> None:
    assert problems(f"initial_state: A\nstates:\n  A: {state_text}\n") == [expected]


def test_problems_without_a_line_map() -> None:
    found = validate({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True, "X": 1}}})
    assert found == [Problem("A", "X", None, "'X' is not a field of a Pass state")]
    assert str(found[0]) == "state 'A', field 'X': 'X' is not a field of a Pass state"
    assert found[0].error().field == "X"
