"""Conformance of ``stream_processors.declarative.choice`` with the States Language's Choice rules:
every operator and its ``...Path`` variant, type mismatches (false, not an error), And/Or/Not,
the specification's example Choice state, and the compile errors that name state and field.
"""

from __future__ import annotations

from typing import Any

import pytest

from stream_processors.declarative.choice import ChoiceRule, choose, compile_rule, wildcard
from stream_processors.declarative.errors import StatesError
from stream_processors.declarative.problems import DefinitionError
from stream_processors.declarative.values import JSON


def rule(operator: str, literal: Any, variable: str = "$.v") -> ChoiceRule:
    return compile_rule({"Variable": variable, operator: literal, "Next": "X"}, state="Pick")


T1 = "2016-03-14T01:59:00Z"
T2 = "2016-03-14T02:59:00Z"
T1_OFFSET = "2016-03-14T02:59:00+01:00"  # the same instant as T1

# (operator, literal, the variable's value, expected)
CASES: list[tuple[str, Any, JSON, bool]] = [
    ("StringEquals", "abc", "abc", True),
    ("StringEquals", "abc", "abd", False),
    ("StringEquals", "1", 1, False),
    ("StringLessThan", "b", "a", True),
    ("StringLessThan", "b", "b", False),
    ("StringLessThan", "b", "B", True),  # by code point: upper case sorts first
    ("StringGreaterThan", "b", "c", True),
    ("StringGreaterThan", "b", "b", False),
    ("StringLessThanEquals", "b", "b", True),
    ("StringLessThanEquals", "b", "c", False),
    ("StringGreaterThanEquals", "b", "b", True),
    ("StringGreaterThanEquals", "b", "a", False),
    ("StringMatches", "log-*.txt", "log-2024-01.txt", True),
    ("StringMatches", "log-*.txt", "log-1.csv", False),
    ("StringMatches", "*.log", ".log", True),
    ("StringMatches", "a*b*c", "axxbyyc", True),
    ("StringMatches", "a\\*b", "a*b", True),
    ("StringMatches", "a\\*b", "axb", False),
    ("StringMatches", "a\\\\b", "a\\b", True),
    ("StringMatches", "exact", "exactly", False),
    ("StringMatches", "*", 3, False),
    ("NumericEquals", 1, 1, True),
    ("NumericEquals", 1, 1.0, True),
    ("NumericEquals", 1, "1", False),
    ("NumericEquals", 1, True, False),
    ("NumericLessThan", 30, 22, True),
    ("NumericLessThan", 30, 30, False),
    ("NumericGreaterThan", 20.5, 21, True),
    ("NumericGreaterThan", 20.5, 20.5, False),
    ("NumericLessThanEquals", 30, 30, True),
    ("NumericLessThanEquals", 30, 31, False),
    ("NumericGreaterThanEquals", 20, 20, True),
    ("NumericGreaterThanEquals", 20, 19.99, False),
    ("NumericGreaterThanEquals", 20, None, False),
    ("BooleanEquals", True, True, True),
    ("BooleanEquals", True, False, False),
    ("BooleanEquals", False, 0, False),
    ("BooleanEquals", True, "true", False),
    ("TimestampEquals", T1, T1, True),
    ("TimestampEquals", T1, T1_OFFSET, True),
    ("TimestampEquals", T1, "2016-03-14T01:59:00.000Z", True),
    ("TimestampEquals", T1, "2016-03-14", False),
    ("TimestampEquals", T1, "2016-03-14t01:59:00z", False),
    ("TimestampLessThan", T2, T1, True),
    ("TimestampLessThan", T1, T1, False),
    ("TimestampGreaterThan", T1, T2, True),
    ("TimestampGreaterThan", T1, "not a time", False),
    ("TimestampLessThanEquals", T1, T1_OFFSET, True),
    ("TimestampLessThanEquals", T1, T2, False),
    ("TimestampGreaterThanEquals", T1, T1, True),
    ("TimestampGreaterThanEquals", T2, T1, False),
    ("IsNull", True, None, True),
    ("IsNull", True, "null", False),
    ("IsNull", False, 0, True),
    ("IsNumeric", True, 3.5, True),
    ("IsNumeric", True, "3.5", False),
    ("IsNumeric", True, False, False),
    ("IsNumeric", False, "x", True),
    ("IsString", True, "", True),
    ("IsString", True, None, False),
    ("IsBoolean", True, False, True),
    ("IsBoolean", True, 1, False),
    ("IsTimestamp", True, T1, True),
    ("IsTimestamp", True, "2016-13-14T01:59:00Z", False),
    ("IsTimestamp", False, 3, True),
    ("IsPresent", True, None, True),
    ("IsPresent", False, "x", False),
]


@pytest.mark.parametrize(("operator", "literal", "value", "expected"), CASES)
def test_each_operator(operator: str, literal: Any, value: JSON, expected: bool) -> None:
    assert rule(operator, literal)({"v": value}) is expected


PATH_CASES = [
    (op, lit, val, exp)
    for op, lit, val, exp in CASES
    if op.startswith(("String", "Numeric", "Boolean", "Timestamp")) and op != "StringMatches"
]


@pytest.mark.parametrize(("operator", "literal", "value", "expected"), PATH_CASES)
def test_each_path_variant_compares_with_the_value_the_path_selects(
    operator: str, literal: Any, value: JSON, expected: bool
) -> None:
    assert rule(f"{operator}Path", "$.other")({"v": value, "other": literal}) is expected


def test_a_path_variant_whose_value_has_the_wrong_type_is_false() -> None:
    assert rule("NumericEqualsPath", "$.other")({"v": 1, "other": "1"}) is False


def test_is_present_on_a_missing_variable() -> None:
    assert rule("IsPresent", True, "$.missing")({"v": 1}) is False
    assert rule("IsPresent", False, "$.missing")({"v": 1}) is True
    assert rule("IsPresent", True, "$.v.deeper")({"v": 1}) is False


@pytest.mark.parametrize(
    ("operator", "literal"),
    [("StringEquals", "a"), ("IsNull", True), ("NumericEqualsPath", "$.v"), ("IsString", False)],
)
def test_a_missing_variable_is_a_runtime_error(operator: str, literal: Any) -> None:
    with pytest.raises(StatesError) as caught:
        rule(operator, literal, "$.missing")({"v": 1})
    assert caught.value.error == "States.Runtime"
    assert "$.missing" in caught.value.cause


def test_a_missing_path_operand_is_a_runtime_error() -> None:
    with pytest.raises(StatesError):
        rule("StringEqualsPath", "$.nothing")({"v": "a"})


def test_a_context_object_variable() -> None:
    check = rule("StringEquals", "Pick", "$$.State.Name")
    assert check({}, {"State": {"Name": "Pick"}}) is True


def test_the_specifications_example_choice_state() -> None:
    choices = [
        (compile_rule(r, state="ChoiceStateX", field=f"Choices[{i}]"), str(r["Next"]))
        for i, r in enumerate(
            [
                {"Not": {"Variable": "$.type", "StringEquals": "Private"}, "Next": "Public"},
                {
                    "And": [
                        {"Variable": "$.value", "IsPresent": True},
                        {"Variable": "$.value", "IsNumeric": True},
                        {"Variable": "$.value", "NumericGreaterThanEquals": 20},
                        {"Variable": "$.value", "NumericLessThan": 30},
                    ],
                    "Next": "ValueInTwenties",
                },
                {
                    "Variable": "$.rating",
                    "NumericGreaterThanPath": "$.auditThreshold",
                    "Next": "StartAudit",
                },
            ]
        )
    ]
    assert choose(choices, "RecordEvent", {"type": "Private", "value": 22}) == "ValueInTwenties"
    assert choose(choices, "RecordEvent", {"type": "Public"}) == "Public"
    assert (
        choose(
            choices,
            "RecordEvent",
            {"type": "Private", "value": "22", "rating": 9, "auditThreshold": 5},
        )
        == "StartAudit"
    )
    assert (
        choose(
            choices,
            "RecordEvent",
            {"type": "Private", "value": 35, "rating": 1, "auditThreshold": 5},
        )
        == "RecordEvent"
    )
    with pytest.raises(StatesError) as caught:
        choose(choices, None, {"type": "Private", "value": 35, "rating": 1, "auditThreshold": 5})
    assert caught.value.error == "States.NoChoiceMatched"


def test_or_and_nested_not() -> None:
    either = compile_rule(
        {
            "Or": [
                {"Variable": "$.a", "BooleanEquals": True},
                {
                    "Not": {
                        "And": [
                            {"Variable": "$.b", "IsPresent": True},
                            {"Variable": "$.b", "NumericEquals": 0},
                        ]
                    }
                },
            ],
            "Next": "Y",
        },
        state="S",
    )
    assert either({"a": True, "b": 0}) is True
    assert either({"a": False, "b": 0}) is False
    assert either({"a": False, "b": 1}) is True
    assert either({"a": False}) is True


@pytest.mark.parametrize(
    ("choice_rule", "field"),
    [
        ({"Variable": "$.v", "StringEqual": "a", "Next": "X"}, "Choices[2].StringEqual"),
        (
            {"Variable": "$.v", "StringEquals": "a", "NumericEquals": 1, "Next": "X"},
            "Choices[2].StringEquals",
        ),
        ({"StringEquals": "a", "Next": "X"}, "Choices[2].Variable"),
        ({"Variable": "$.v", "Next": "X"}, "Choices[2]"),
        (
            {"Variable": "$.v", "TimestampEquals": "2016-03-14 01:59:00", "Next": "X"},
            "Choices[2].TimestampEquals",
        ),
        ({"Variable": "$.v", "NumericEquals": "1", "Next": "X"}, "Choices[2].NumericEquals"),
        ({"Variable": "$.v", "BooleanEquals": "true", "Next": "X"}, "Choices[2].BooleanEquals"),
        ({"Variable": "$.v", "IsNull": "yes", "Next": "X"}, "Choices[2].IsNull"),
        ({"Variable": "$.v", "StringEqualsPath": "v", "Next": "X"}, "Choices[2].StringEqualsPath"),
        ({"Variable": "v", "StringEquals": "a", "Next": "X"}, "Choices[2].Variable"),
        ({"Variable": "$.v", "StringEquals": "a"}, "Choices[2].Next"),
        ({"And": [], "Next": "X"}, "Choices[2].And"),
        (
            {"And": [{"Variable": "$.v", "IsNull": True, "Next": "Y"}], "Next": "X"},
            "Choices[2].And[0].Next",
        ),
        ({"Or": [{"Variable": "$.v", "Bogus": 1}], "Next": "X"}, "Choices[2].Or[0].Bogus"),
        ({"Not": {"Variable": "$.v"}, "Next": "X"}, "Choices[2].Not"),
        (
            {"Not": {"Variable": "$.v", "IsNull": True}, "Variable": "$.v", "Next": "X"},
            "Choices[2].Not",
        ),
        ({"Condition": "{% $x %}", "Next": "X"}, "Choices[2].Condition"),
    ],
)
def test_compile_errors_name_the_state_and_the_field(
    choice_rule: dict[str, Any], field: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_rule(choice_rule, state="Pick", field="Choices[2]")
    assert (caught.value.state, caught.value.field) == ("Pick", field)
    assert str(caught.value).startswith(f"state 'Pick', field '{field}': ")


def test_wildcard_escapes_regex_characters() -> None:
    assert wildcard("a.b*").fullmatch("a.bc")
    assert not wildcard("a.b*").fullmatch("axbc")
