"""Conformance of the intrinsic functions with the Step Functions guide's documented examples.

Each case is a ``.$`` template value evaluated against an input, expected as the guide shows.
"""

from __future__ import annotations

import uuid

import pytest

from stream_processors.declarative import intrinsics
from stream_processors.declarative.dataflow import parameters
from stream_processors.declarative.errors import StatesError
from stream_processors.declarative.values import JSON

NINE: JSON = {"inputArray": [1, 2, 3, 4, 5, 6, 7, 8, 9]}


def run(expression: str, doc: JSON = None, seed: str = "seed") -> JSON:
    filled = parameters({"out.$": expression}, doc if doc is not None else {}, None, seed)
    assert isinstance(filled, dict)
    return filled["out"]


@pytest.mark.parametrize(
    ("expression", "doc", "expected"),
    [
        (
            "States.Format('Hello, my name is {}.', $.name)",
            {"name": "Arnav"},
            "Hello, my name is Arnav.",
        ),
        ("States.Format('{} is {} and {}', $.a, 3, true)", {"a": "x"}, "x is 3 and true"),
        ("States.Format('n={}', null)", {}, "n=null"),
        (
            "States.Format('literal \\{\\} and \\'quoted\\' {}', 'x')",
            {},
            "literal {} and 'quoted' x",
        ),
        ("States.StringToJson($.someString)", {"someString": '{"number": 20}'}, {"number": 20}),
        (
            "States.JsonToString($.someJson)",
            {"someJson": {"name": "Foo", "zebra": "Bar"}},
            '{"name":"Foo","zebra":"Bar"}',
        ),
        (
            "States.Array('Foo', 2020, $.someJson, null)",
            {"someJson": {"random": "abc"}},
            ["Foo", 2020, {"random": "abc"}, None],
        ),
        ("States.Array()", {}, []),
        ("States.ArrayPartition($.inputArray, 4)", NINE, [[1, 2, 3, 4], [5, 6, 7, 8], [9]]),
        ("States.ArrayContains($.inputArray, $.lookingFor)", {**NINE, "lookingFor": 5}, True),
        ("States.ArrayContains($.inputArray, 10)", NINE, False),
        ("States.ArrayRange(1, 9, 2)", {}, [1, 3, 5, 7, 9]),
        ("States.ArrayRange(9, 1, -3)", {}, [9, 6, 3]),
        ("States.ArrayGetItem($.inputArray, $.index)", {**NINE, "index": 5}, 6),
        ("States.ArrayLength($.inputArray)", NINE, 9),
        ("States.ArrayUnique($.a)", {"a": [1, 2, 3, 3, 3, 3, 3, 3, 4]}, [1, 2, 3, 4]),
        ("States.ArrayUnique($.a)", {"a": [1, True, {"k": 1}, {"k": 1}]}, [1, True, {"k": 1}]),
        ("States.Base64Encode($.input)", {"input": "Data to encode"}, "RGF0YSB0byBlbmNvZGU="),
        ("States.Base64Decode($.base64)", {"base64": "RGF0YSB0byBlbmNvZGU="}, "Data to encode"),
        (
            "States.Hash($.Data, $.Algorithm)",
            {"Data": "input data", "Algorithm": "SHA-1"},
            "aaff4a450a104cd177d28d18d74485e8cae074b7",
        ),
        (
            "States.JsonMerge($.json1, $.json2, false)",
            {
                "json1": {"a": {"a1": 1, "a2": 2}, "b": 2},
                "json2": {"a": {"a3": 1, "a4": 2}, "c": 3},
            },
            {"a": {"a3": 1, "a4": 2}, "b": 2, "c": 3},
        ),
        (
            "States.JsonMerge($.json1, $.json2, true)",
            {"json1": {"a": {"a1": 1}, "b": 2}, "json2": {"a": {"a3": 1}}},
            {"a": {"a1": 1, "a3": 1}, "b": 2},
        ),
        ("States.MathAdd($.value1, $.step)", {"value1": 111, "step": -1}, 110),
        (
            "States.StringSplit($.inputString, $.splitter)",
            {"inputString": "1,2,3,4,5", "splitter": ","},
            ["1", "2", "3", "4", "5"],
        ),
        (
            "States.StringSplit($.s, '.+,=')",
            {"s": "This.is+a,test=string"},
            ["This", "is", "a", "test", "string"],
        ),
        ("States.ArrayLength(States.Array(1, 2, States.Array()))", {}, 3),
    ],
)
def test_documented_examples(expression: str, doc: JSON, expected: JSON) -> None:
    assert run(expression, doc) == expected


def test_uuid_is_a_version_4_uuid_drawn_from_the_seed() -> None:
    first = run("States.UUID()", seed="cmd-1")
    assert isinstance(first, str)
    assert uuid.UUID(first).version == 4
    assert run("States.UUID()", seed="cmd-1") == first
    assert run("States.UUID()", seed="cmd-2") != first
    two = parameters({"a.$": "States.UUID()", "b.$": "States.UUID()"}, {}, None, "cmd-1")
    assert isinstance(two, dict) and two["a"] != two["b"]


def test_math_random_is_in_range_and_repeats_for_a_seed() -> None:
    drawn = [run("States.MathRandom(1, 999)", seed=f"s{n}") for n in range(200)]
    assert all(isinstance(v, int) and 1 <= v < 999 for v in drawn)
    assert len(set(drawn)) > 100  # spread out, not one value
    assert run("States.MathRandom(1, 999)", seed="s7") == drawn[7]
    assert run("States.MathRandom(1, 999, 42)", seed="a") == run(
        "States.MathRandom(1, 999, 42)", seed="b"
    )


@pytest.mark.parametrize(
    ("expression", "doc"),
    [
        ("States.Format('{} and {}', 'one')", {}),
        ("States.Format('{}', $.o)", {"o": {"k": 1}}),
        ("States.StringToJson('not json')", {}),
        ("States.ArrayGetItem($.a, 3)", {"a": [1]}),
        ("States.ArrayLength($.a)", {"a": "text"}),
        ("States.ArrayRange(1, 3000, 1)", {}),
        ("States.ArrayPartition($.a, 0)", {"a": [1]}),
        ("States.Hash('x', 'SHA-3')", {}),
        ("States.MathAdd(1.5, 1)", {}),
        ("States.Base64Decode('%%%')", {}),
    ],
)
def test_a_failing_call_is_an_intrinsic_failure(expression: str, doc: JSON) -> None:
    with pytest.raises(StatesError) as caught:
        run(expression, doc)
    assert caught.value.error == "States.IntrinsicFailure"


@pytest.mark.parametrize(
    "expression",
    [
        "States.Nope(1)",
        "States.Format('x'",
        "States.ArrayLength()",
        "States.UUID(1)",
        "States.Array(1 2)",
        "Format('x')",
        "States.Array(1) trailing",
    ],
)
def test_parse_refuses_bad_calls(expression: str) -> None:
    with pytest.raises(ValueError):
        intrinsics.parse(expression)
