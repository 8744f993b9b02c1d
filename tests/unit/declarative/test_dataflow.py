"""Conformance of ``stream_processors.declarative.dataflow`` with the States Language's data flow.

The cases are the specification's and the Step Functions guide's documented examples
(InputPath/ResultPath/OutputPath, Parameters with the context object, ResultSelector, ResultPath
null/``$``/nested), plus the error each documented failure reports.
"""

from __future__ import annotations

import jsonpath
import pytest

from stream_processors.declarative.dataflow import (
    apply_result,
    effective_input,
    parameters,
    path_problem,
    place,
    select,
)
from stream_processors.declarative.errors import StatesError
from stream_processors.declarative.values import JSON

NUMBERS: JSON = {"title": "Numbers to add", "numbers": {"val1": 3, "val2": 4}}
GREETING: JSON = {
    "comment": "This is a test of the input and output of a Task state.",
    "details": "Default example",
    "who": "AWS Step Functions",
}
STORE: JSON = {
    "store": {
        "book": [
            {"category": "reference", "author": "Nigel Rees", "price": 8.95},
            {"category": "fiction", "author": "Evelyn Waugh", "price": 12.99},
            {"category": "fiction", "author": "Herman Melville", "price": 8.99},
        ],
        "bicycle": {"color": "red", "price": 19.95},
    }
}


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        (NUMBERS, "$", NUMBERS),
        (NUMBERS, None, {}),
        (NUMBERS, "$.numbers", {"val1": 3, "val2": 4}),
        (NUMBERS, "$.numbers.val2", 4),
        (NUMBERS, "$['numbers']['val1']", 3),
        ({"vals": [0, 10, 20, 30, 40, 50]}, "$.vals[0]", 0),
        ({"vals": [0, 10, 20, 30, 40, 50]}, "$.vals[-1]", 50),
        ({"vals": [0, 10, 20, 30, 40, 50]}, "$.vals[-3:]", [30, 40, 50]),
        ({"detail-type": "Order Placed"}, "$.detail-type", "Order Placed"),
        (STORE, "$.store.book[*].author", ["Nigel Rees", "Evelyn Waugh", "Herman Melville"]),
        (STORE, "$..price", [8.95, 12.99, 8.99, 19.95]),
        (STORE, "$.store.book[?(@.price < 9)].author", ["Nigel Rees", "Herman Melville"]),
        (STORE, "$.store.book[?(@.price > 100)]", []),
        ({"a": None}, "$.a", None),
    ],
)
def test_select_follows_the_path_rules(doc: JSON, path: str | None, expected: JSON) -> None:
    assert select(doc, path) == expected


def test_a_context_path_reads_the_context_object() -> None:
    context: JSON = {"Execution": {"Id": "exec-1"}, "State": {"Name": "Charge"}}
    assert select({"x": 1}, "$$.Execution.Id", context) == "exec-1"
    assert select({"x": 1}, "$$", context) == context


@pytest.mark.parametrize("path", ["$.missing", "$.numbers.val3", "$.title.length", "$.numbers[0]"])
def test_a_reference_path_that_selects_nothing_is_a_runtime_error(path: str) -> None:
    with pytest.raises(StatesError) as caught:
        select(NUMBERS, path)
    assert caught.value.error == "States.Runtime"
    assert path in caught.value.cause


def test_the_specification_input_and_result_path_example() -> None:
    # InputPath "$.numbers" feeds an adder; ResultPath "$.sum" adds its result to the input.
    assert effective_input(NUMBERS, "$.numbers") == {"val1": 3, "val2": 4}
    assert apply_result(NUMBERS, 7, None, "$.sum", "$") == {**NUMBERS, "sum": 7}


def test_the_specification_parameters_example_with_the_context_object() -> None:
    template: JSON = {
        "flagged": True,
        "parts": {"first.$": "$.vals[0]", "last3.$": "$.vals[-3:]"},
        "weekday.$": "$$.DayOfWeek",
        "formattedOutput.$": "States.Format('Today is {}', $$.DayOfWeek)",
    }
    doc: JSON = {"flagged": 7, "vals": [0, 10, 20, 30, 40, 50]}
    assert parameters(template, doc, {"DayOfWeek": "TUESDAY"}) == {
        "flagged": True,
        "parts": {"first": 0, "last3": [30, 40, 50]},
        "weekday": "TUESDAY",
        "formattedOutput": "Today is TUESDAY",
    }


def test_parameters_recurse_into_arrays_and_copy_static_values() -> None:
    template: JSON = {"items": [{"id.$": "$.id", "kind": "static"}, 3, "x"], "n": None}
    assert parameters(template, {"id": "a1"}) == {
        "items": [{"id": "a1", "kind": "static"}, 3, "x"],
        "n": None,
    }


def test_parameters_after_input_path() -> None:
    doc: JSON = {"order": {"id": "o-1", "total": 42}, "other": 1}
    assert effective_input(doc, "$.order", {"orderId.$": "$.id", "fixed": 1}) == {
        "orderId": "o-1",
        "fixed": 1,
    }
    assert effective_input(doc, None, {"fixed.$": "$"}) == {"fixed": {}}


def test_a_parameters_path_that_selects_nothing_is_a_parameter_path_failure() -> None:
    with pytest.raises(StatesError) as caught:
        parameters({"x.$": "$.nope"}, {"a": 1})
    assert caught.value.error == "States.ParameterPathFailure"
    assert "$.nope" in caught.value.cause


@pytest.mark.parametrize(
    ("result_path", "expected"),
    [
        ("$", "Hello, AWS Step Functions!"),
        (None, GREETING),
        ("$.taskresult", {**GREETING, "taskresult": "Hello, AWS Step Functions!"}),
        ("$.who", {**GREETING, "who": "Hello, AWS Step Functions!"}),
        (
            "$.strings.lambdaresult",
            {**GREETING, "strings": {"lambdaresult": "Hello, AWS Step Functions!"}},
        ),
    ],
)
def test_result_path_as_the_guide_shows(result_path: str | None, expected: JSON) -> None:
    assert place(GREETING, "Hello, AWS Step Functions!", result_path) == expected


def test_result_path_replaces_an_existing_node_and_leaves_the_input_unchanged() -> None:
    raw: JSON = {"master": {"detail": [1, 2, 3]}}
    assert place(raw, 6, "$.master.detail") == {"master": {"detail": 6}}
    assert place(raw, 9, "$.master.detail[1]") == {"master": {"detail": [1, 9, 3]}}
    assert raw == {"master": {"detail": [1, 2, 3]}}


@pytest.mark.parametrize(
    ("state_input", "result_path"),
    [({"a": 1}, "$.a.b"), ("text", "$.a"), ({"a": [1]}, "$.a[3]"), ({"a": [1]}, "$.a.b")],
)
def test_result_path_through_a_non_object_is_a_match_failure(
    state_input: JSON, result_path: str
) -> None:
    with pytest.raises(StatesError) as caught:
        place(state_input, 1, result_path)
    assert caught.value.error == "States.ResultPathMatchFailure"
    assert result_path in caught.value.cause


def test_result_selector_then_result_path_then_output_path() -> None:
    result: JSON = {
        "resourceType": "elasticmapreduce",
        "resource": "addStep",
        "output": {"SdkHttpMetadata": {"HttpStatusCode": 200}, "StepIds": ["s-ABC"]},
    }
    selector: JSON = {"StepId.$": "$.output.StepIds[0]", "ResourceType.$": "$.resourceType"}
    state_input: JSON = {"cluster": "j-1"}
    output = apply_result(state_input, result, selector, "$.EMROutput")
    assert output == {
        "cluster": "j-1",
        "EMROutput": {"StepId": "s-ABC", "ResourceType": "elasticmapreduce"},
    }
    assert (
        apply_result(state_input, result, selector, "$.EMROutput", "$.EMROutput.StepId") == "s-ABC"
    )
    assert apply_result(state_input, result, None, "$", None) == {}


@pytest.mark.parametrize(
    ("path", "reference", "ok"),
    [
        ("$", True, True),
        ("$.a.b[0]", True, True),
        ("$$.Execution.Id", True, True),
        ("$.a[*]", False, True),
        ("$.a[*]", True, False),
        ("$..a", True, False),
        ("a.b", False, False),
        ("$.a[", False, False),
        ("$$.Task.Token", True, True),
    ],
)
def test_path_problem_checks_paths_at_compile_time(path: str, reference: bool, ok: bool) -> None:
    problem = path_problem(path, reference=reference)
    assert (problem is None) == ok
    if problem is not None:
        assert path in problem


def test_a_result_path_cannot_name_the_context_object() -> None:
    assert path_problem("$.result", reference=True, context=False) is None
    problem = path_problem("$$.Execution", reference=True, context=False)
    assert problem is not None and "context object" in problem


@pytest.mark.parametrize(
    "path",
    [
        "$.store",
        "$.store.book[0].author",
        "$.store.book[-1].price",
        "$['store']['bicycle']",
        "$.store.book[3]",
        "$.store.bicycle[0]",
        "$.store.book.author",
        "$.store.book[-4]",
    ],
)
def test_reference_paths_select_what_python_jsonpath_selects(path: str) -> None:
    # select walks Reference Paths itself (the hot path); the library is the reference.
    expected = jsonpath.findall(path, STORE)
    if expected:
        assert select(STORE, path) == expected[0]
    else:
        with pytest.raises(StatesError):
            select(STORE, path)
