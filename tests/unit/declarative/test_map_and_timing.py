"""Map iterations' inputs (the specification's ItemsPath/ItemSelector example), payload-template
checks, and the times a Wait or Task state asks for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from stream_processors.declarative.dataflow import map_item_inputs, template_problems
from stream_processors.declarative.errors import StatesError
from stream_processors.declarative.timing import seconds_at, wait_until_ms
from stream_processors.declarative.values import JSON

SHIPPED: JSON = {
    "ship-date": "2016-03-14T01:59:00Z",
    "detail": {
        "delivery-partner": "UQS",
        "shipped": [
            {"prod": "R31", "dest-code": 9511, "quantity": 1344},
            {"prod": "S39", "dest-code": 9511, "quantity": 40},
        ],
    },
}


def test_the_specifications_map_example() -> None:
    selector: dict[str, JSON] = {
        "parcel.$": "$$.Map.Item.Value",
        "courier.$": "$.detail.delivery-partner",
        "index.$": "$$.Map.Item.Index",
    }
    assert map_item_inputs(SHIPPED, "$.detail.shipped", selector, {"Execution": {}}) == [
        {
            "parcel": {"prod": "R31", "dest-code": 9511, "quantity": 1344},
            "courier": "UQS",
            "index": 0,
        },
        {
            "parcel": {"prod": "S39", "dest-code": 9511, "quantity": 40},
            "courier": "UQS",
            "index": 1,
        },
    ]


def test_without_item_selector_each_item_is_an_input() -> None:
    assert map_item_inputs([1, 2, 3]) == [1, 2, 3]
    assert map_item_inputs({"xs": []}, "$.xs") == []


def test_items_path_must_select_an_array() -> None:
    with pytest.raises(StatesError) as caught:
        map_item_inputs(SHIPPED, "$.detail")
    assert caught.value.error == "States.Runtime"


def test_template_problems_name_each_bad_entry() -> None:
    template: JSON = {
        "ok.$": "$.a",
        "fn.$": "States.Format('{}', $.a)",
        "static": {"deep": [{"bad.$": "$.a["}]},
        "number.$": 3,
        "call.$": "States.Nope()",
        "ctx.$": "$$.Execution.Id",
    }
    found = dict(template_problems(template))
    assert set(found) == {"static.deep[0].bad.$", "number.$", "call.$"}
    assert "not an intrinsic function" in found["call.$"]


NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("state", "doc", "expected"),
    [
        ({"Seconds": 10}, {}, NOW + 10_000),
        ({"Seconds": 0}, {}, NOW),
        ({"SecondsPath": "$.s"}, {"s": 5}, NOW + 5_000),
        (
            {"Timestamp": "2030-01-01T00:00:00Z"},
            {},
            int(datetime.fromisoformat("2030-01-01T00:00:00+00:00").timestamp() * 1000),
        ),
        ({"Timestamp": "2016-03-14T01:59:00Z"}, {}, NOW),  # past: no wait
        (
            {"TimestampPath": "$.expirydate"},
            {"expirydate": "2030-01-01T01:00:00+01:00"},
            int(datetime.fromisoformat("2030-01-01T00:00:00+00:00").timestamp() * 1000),
        ),
    ],
)
def test_wait_until(state: dict[str, Any], doc: JSON, expected: int) -> None:
    assert wait_until_ms(state, doc, NOW) == expected


@pytest.mark.parametrize(
    ("state", "doc"),
    [
        ({"SecondsPath": "$.s"}, {"s": "5"}),
        ({"SecondsPath": "$.s"}, {"s": -1}),
        ({"SecondsPath": "$.s"}, {}),
        ({"TimestampPath": "$.t"}, {"t": "tomorrow"}),
        ({}, {}),
    ],
)
def test_wait_values_of_the_wrong_kind_are_runtime_errors(state: dict[str, Any], doc: JSON) -> None:
    with pytest.raises(StatesError) as caught:
        wait_until_ms(state, doc, NOW)
    assert caught.value.error == "States.Runtime"


def test_seconds_at() -> None:
    assert seconds_at({"t": 30}, "$.t", "TimeoutSecondsPath") == 30
    with pytest.raises(StatesError, match="HeartbeatSecondsPath"):
        seconds_at({"t": 0}, "$.t", "HeartbeatSecondsPath")
